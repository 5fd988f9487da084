"""Fixtures shared by the unit tests: a fresh fakeredis and a fake Docker engine per test."""

from __future__ import annotations

import fakeredis
import pytest

from tests.unit.fakes import FakeDocker


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def docker() -> FakeDocker:
    return FakeDocker()
