"""directory modules."""
