"""Session tasks (see orchestrator.sessions)."""
