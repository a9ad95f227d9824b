"""target modules."""
