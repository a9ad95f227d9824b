"""endpoint modules."""
