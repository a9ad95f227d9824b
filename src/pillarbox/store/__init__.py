"""store modules."""
