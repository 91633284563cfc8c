"""Long-running tasks and their wiring."""
