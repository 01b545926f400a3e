"""rulefinder's pipelines package."""
