"""rulefinder's api package."""
