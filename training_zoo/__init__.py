"""rulefinder's training_zoo package."""
