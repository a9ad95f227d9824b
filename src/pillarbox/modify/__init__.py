"""modify modules."""
