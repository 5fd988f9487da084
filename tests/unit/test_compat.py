"""The library workarounds are applied once, however often they are asked for."""

from __future__ import annotations

from kombu.transport import redis as kombu_redis

from orchestrator.worker import compat


def test_applying_the_workarounds_twice_wraps_each_method_once() -> None:
    compat.apply_all()
    close, append = kombu_redis.Channel.close, kombu_redis.QoS.append
    compat.apply_all()

    assert kombu_redis.Channel.close is close
    assert kombu_redis.QoS.append is append
    assert getattr(close, "_orchestrator_patched", False)
    assert getattr(append, "_orchestrator_patched", False)
