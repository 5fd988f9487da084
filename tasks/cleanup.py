"""Cleanup tasks (see orchestrator.cleanup)."""
