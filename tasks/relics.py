"""Relic tasks (see orchestrator.relics)."""
