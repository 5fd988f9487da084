"""Behaviour of :class:`orchestrator.settings.Settings` and of the Celery settings made of it."""

from __future__ import annotations

import socket

import pytest
from kombu import Queue
from pydantic import ValidationError

from orchestrator.client.config import client_config
from orchestrator.errors import InvalidRequest
from orchestrator.settings import DEFAULT_REDIS_URL, ENV_PREFIX, Settings
from orchestrator.worker.config import worker_options

# -- defaults ----------------------------------------------------------------------------------


def test_defaults_are_documented_values():
    settings = Settings()

    assert ENV_PREFIX == "ORCHESTRATOR_"
    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.result_backend == "redis://localhost:6379/0"
    assert settings.redis_url is None
    assert settings.host_name == socket.gethostname()
    assert settings.worker_concurrency == 32
    assert (settings.max_memory_mb, settings.max_cpu_limit) == (8192, 4.0)
    assert (settings.max_timeout_seconds, settings.max_pids_limit) == (3600, 4096)
    assert settings.default_pids_limit == 256
    assert settings.log_cap_bytes == 262_144
    assert settings.container_log_max_size == "20m"
    assert settings.grace_seconds == 60
    assert settings.lease_seconds == 20
    assert settings.host_ttl_seconds == 20
    assert settings.visibility_timeout_seconds == 600
    assert settings.result_ttl_seconds == 86400
    assert settings.allowed_volume_roots == []
    assert settings.allowed_build_roots == []
    assert settings.relic_cap_add == []
    assert settings.session_egress is False
    assert settings.session_subnet_pool == "10.213.0.0/16"
    assert settings.session_subnet_prefix == 26
    assert settings.session_ttl_seconds == 3600
    assert settings.session_max_lifetime_seconds == 86400


def test_empty_environment_gives_the_defaults():
    assert Settings.from_env(environ={}, host_name="h") == Settings(host_name="h")


def test_settings_are_frozen():
    settings = Settings(host_name="h")

    with pytest.raises(ValidationError):
        settings.max_memory_mb = 1  # type: ignore[misc]


# -- from_env ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "field", "value"),
    [
        ("ORCHESTRATOR_MAX_MEMORY_MB", "2048", "max_memory_mb", 2048),
        ("ORCHESTRATOR_WORKER_CONCURRENCY", "4", "worker_concurrency", 4),
        ("ORCHESTRATOR_LEASE_SECONDS", " 30 ", "lease_seconds", 30),
        ("ORCHESTRATOR_MAX_CPU_LIMIT", "2.5", "max_cpu_limit", 2.5),
        ("ORCHESTRATOR_WAIT_SLICE_SECONDS", "0.1", "wait_slice_seconds", 0.1),
        ("ORCHESTRATOR_HEARTBEAT_SECONDS", "3", "heartbeat_seconds", 3.0),
        ("ORCHESTRATOR_BROKER_URL", "amqp://guest@rabbit//", "broker_url", "amqp://guest@rabbit//"),
        ("ORCHESTRATOR_HOST_NAME", "dock-7", "host_name", "dock-7"),
        ("ORCHESTRATOR_SESSION_SUBNET_POOL", "10.99.0.0/20", "session_subnet_pool", "10.99.0.0/20"),
        (
            "ORCHESTRATOR_ALLOWED_VOLUME_ROOTS",
            "/srv/a,/srv/b",
            "allowed_volume_roots",
            ["/srv/a", "/srv/b"],
        ),
        ("ORCHESTRATOR_ALLOWED_BUILD_ROOTS", " /x , ,/y,", "allowed_build_roots", ["/x", "/y"]),
        ("ORCHESTRATOR_RELIC_CAP_ADD", "NET_BIND_SERVICE", "relic_cap_add", ["NET_BIND_SERVICE"]),
        ("ORCHESTRATOR_RELIC_CAP_ADD", ",", "relic_cap_add", []),
    ],
)
def test_environment_variable_is_parsed_into_its_field(variable, raw, field, value):
    settings = Settings.from_env(environ={variable: raw})

    assert getattr(settings, field) == value


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("true", True),
        ("yes", True),
        ("on", True),
        ("TRUE", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("Off", False),
    ],
)
def test_boolean_variables_accept_the_usual_spellings(raw, value):
    settings = Settings.from_env(environ={"ORCHESTRATOR_SESSION_EGRESS": raw}, host_name="h")

    assert settings.session_egress is value


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("ORCHESTRATOR_MAX_MEMORY_MB", "lots"),
        ("ORCHESTRATOR_MAX_MEMORY_MB", "1.5"),
        ("ORCHESTRATOR_MAX_MEMORY_MB", "2"),  # below the minimum of 4
        ("ORCHESTRATOR_MAX_CPU_LIMIT", "fast"),
        ("ORCHESTRATOR_MAX_CPU_LIMIT", "0"),
        ("ORCHESTRATOR_WORKER_CONCURRENCY", "0"),
        ("ORCHESTRATOR_WORKER_CONCURRENCY", "5000"),
        ("ORCHESTRATOR_LEASE_SECONDS", "2"),
        ("ORCHESTRATOR_WAIT_SLICE_SECONDS", "10"),
        ("ORCHESTRATOR_SESSION_EGRESS", "maybe"),
        ("ORCHESTRATOR_SESSION_SUBNET_PREFIX", "8"),
        ("ORCHESTRATOR_SESSION_SUBNET_PREFIX", "30"),
        ("ORCHESTRATOR_LOG_CAP_BYTES", "100"),
    ],
)
def test_bad_value_raises_invalid_request_naming_the_variable(variable, raw):
    with pytest.raises(InvalidRequest) as info:
        Settings.from_env(environ={variable: raw}, host_name="h")

    assert str(info.value).startswith(f"invalid settings: {variable}: ")


def test_every_bad_variable_is_named_in_one_message():
    environ = {"ORCHESTRATOR_MAX_MEMORY_MB": "x", "ORCHESTRATOR_SESSION_EGRESS": "x"}

    with pytest.raises(InvalidRequest) as info:
        Settings.from_env(environ=environ, host_name="h")

    assert "ORCHESTRATOR_MAX_MEMORY_MB: " in str(info.value)
    assert "ORCHESTRATOR_SESSION_EGRESS: " in str(info.value)


def test_subnet_pool_that_is_not_a_network_is_rejected_at_startup():
    with pytest.raises(InvalidRequest, match="ORCHESTRATOR_SESSION_SUBNET_POOL"):
        Settings.from_env(environ={"ORCHESTRATOR_SESSION_SUBNET_POOL": "not-a-net"}, host_name="h")


def test_unknown_and_foreign_variables_are_ignored():
    environ = {
        "ORCHESTRATOR_FROBNICATE": "1",
        "ORCHESTRATOR_max_memory_mb": "1",  # names are upper case only
        "MAX_MEMORY_MB": "1",
        "PATH": "/bin",
    }

    assert Settings.from_env(environ=environ, host_name="h") == Settings(host_name="h")


def test_empty_variable_means_the_default():
    settings = Settings.from_env(environ={"ORCHESTRATOR_MAX_MEMORY_MB": ""}, host_name="h")

    assert settings.max_memory_mb == 8192


def test_overrides_win_over_the_environment():
    environ = {"ORCHESTRATOR_MAX_MEMORY_MB": "2048", "ORCHESTRATOR_HOST_NAME": "env-host"}

    settings = Settings.from_env(environ=environ, host_name="override", max_memory_mb=16)

    assert (settings.host_name, settings.max_memory_mb) == ("override", 16)


def test_unknown_override_is_rejected_naming_it():
    with pytest.raises(InvalidRequest, match="ORCHESTRATOR_BOGUS"):
        Settings.from_env(environ={}, bogus=1)


def test_process_environment_is_read_when_no_mapping_is_given(monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_HOST_NAME", "from-os-environ")
    monkeypatch.setenv("ORCHESTRATOR_GRACE_SECONDS", "7")

    settings = Settings.from_env()

    assert (settings.host_name, settings.grace_seconds) == ("from-os-environ", 7)


# -- derived values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("redis_url", "result_backend", "expected"),
    [
        ("redis://reg:6379/3", "redis://res:6379/1", "redis://reg:6379/3"),
        (None, "redis://res:6379/1", "redis://res:6379/1"),
        (None, "rediss://res:6380/1", "rediss://res:6380/1"),
        (None, "rpc://", DEFAULT_REDIS_URL),
        (None, "amqp://guest@rabbit//", DEFAULT_REDIS_URL),
        ("", "db+postgresql://x/y", DEFAULT_REDIS_URL),
    ],
)
def test_registry_url_prefers_redis_url_then_a_redis_result_backend(
    redis_url, result_backend, expected
):
    settings = Settings(host_name="h", redis_url=redis_url, result_backend=result_backend)

    assert settings.registry_url == expected


def test_host_queue_is_named_after_the_host():
    assert Settings(host_name="alpha-1").host_queue == "host.alpha-1"


# -- Celery settings (what celeryconfig.py sets) -------------------------------------------------


def worker_config(settings: Settings) -> dict:
    """The worker's Celery settings, as ``celeryconfig.py`` sets them (test_packaging checks)."""
    return {**client_config(settings), **worker_options(settings)}


@pytest.fixture
def worker_conf():
    return worker_config(
        Settings(host_name="alpha", worker_concurrency=7, visibility_timeout_seconds=900)
    )


def test_worker_config_accepts_and_sends_json_only(worker_conf):
    assert worker_conf["task_serializer"] == "json"
    assert worker_conf["result_serializer"] == "json"
    assert worker_conf["accept_content"] == ["json"]
    assert worker_conf["result_accept_content"] == ["json"]


def test_worker_config_acknowledges_late_and_prefetches_one(worker_conf):
    assert worker_conf["task_acks_late"] is True
    assert worker_conf["task_reject_on_worker_lost"] is True
    assert worker_conf["worker_prefetch_multiplier"] == 1


def test_worker_config_keeps_extended_results_and_sends_events(worker_conf):
    assert worker_conf["result_extended"] is True
    assert worker_conf["worker_send_task_events"] is True
    assert worker_conf["task_send_sent_event"] is True
    assert worker_conf["result_expires"] == 86400


def test_worker_config_runs_a_thread_pool_sized_by_settings(worker_conf):
    assert worker_conf["worker_pool"] == "threads"
    assert worker_conf["worker_concurrency"] == 7


def test_worker_consumes_the_default_tools_relics_and_own_host_queues(worker_conf):
    queues = worker_conf["task_queues"]

    assert all(isinstance(q, Queue) for q in queues)
    assert [q.name for q in queues] == ["celery", "tools", "relics", "host.alpha"]
    assert worker_conf["task_default_queue"] == "celery"


def test_tasks_are_routed_to_tools_and_relics_by_name(worker_conf):
    assert worker_conf["task_routes"] == {
        "orchestrator.tools.*": {"queue": "tools"},
        "orchestrator.relics.*": {"queue": "relics"},
    }


@pytest.mark.parametrize("broker", ["redis://r:6379/0", "rediss://r:6380/0", "sentinel://s:26379"])
def test_redis_broker_gets_the_visibility_timeout_from_settings(broker):
    conf = worker_config(Settings(host_name="h", broker_url=broker, visibility_timeout_seconds=900))

    assert conf["broker_url"] == broker
    sweep = {"unacked_restore_interval": 10, "unacked_restore_throttle": 1}
    assert conf["broker_transport_options"] == {"visibility_timeout": 900, **sweep}
    assert conf["result_backend_transport_options"] == {"visibility_timeout": 900, **sweep}


def test_a_short_visibility_timeout_is_swept_for_every_tenth_of_it():
    conf = worker_config(Settings(host_name="h", visibility_timeout_seconds=10))

    assert conf["broker_transport_options"]["unacked_restore_interval"] == 1
    assert conf["broker_transport_options"]["unacked_restore_throttle"] == 1


def test_amqp_broker_gets_no_visibility_options():
    conf = worker_config(Settings(host_name="h", broker_url="amqp://guest:guest@rabbit:5672//"))

    assert conf["broker_transport_options"] == {}
    assert "visibility_timeout" not in conf["result_backend_transport_options"]


def test_client_config_is_the_worker_config_without_worker_options():
    settings = Settings(host_name="h")

    client = client_config(settings)
    worker = worker_config(settings)

    assert client.items() <= worker.items()
    assert "task_queues" not in client
    assert "worker_pool" not in client
