"""Fixtures shared by the unit tests: a fresh fakeredis and a fake Docker engine per test."""

from __future__ import annotations

import fakeredis
import pytest

from orchestrator.engine.fake import FakeEngine


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def engine() -> FakeEngine:
    """An in-memory engine holding ``busybox:latest`` (containers exit 0 at once)."""
    return FakeEngine()
