"""queue modules."""
