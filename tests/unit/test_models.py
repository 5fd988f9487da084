"""Behaviour of the request models and :func:`orchestrator.models.parse_request`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator.errors import InvalidRequest, OrchestratorError
from orchestrator.models import (
    RelicStartRequest,
    ResourceLimits,
    ToolExecutionRequest,
    parse_request,
)

DIGEST = "0123456789abcdef" * 4  # 64 hex digits

TOOL: dict[str, Any] = {"tool_name": "echo", "session_id": "sess-1", "image": "busybox"}
RELIC: dict[str, Any] = {"relic_name": "db", "session_id": "sess-1", "image": "busybox"}

DROP = object()  # marks a key to remove from the base request


def with_changes(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``changes`` applied (``DROP`` removes a key)."""
    data = dict(base)
    for key, value in changes.items():
        if value is DROP:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def rejection(model: type[BaseModel], data: Any) -> str:
    """The message of the InvalidRequest that parse_request raises for ``data``."""
    with pytest.raises(InvalidRequest) as info:
        parse_request(model, data)
    return str(info.value)


# -- valid requests and defaults ------------------------------------------------------------


def test_minimal_tool_request_is_accepted_with_default_limits_and_sandbox():
    request = parse_request(ToolExecutionRequest, dict(TOOL))

    assert request.resource_limits == ResourceLimits(
        memory_mb=512, cpu_limit=1.0, timeout_seconds=300, pids_limit=None
    )
    assert request.network_mode == "none"
    assert request.cleanup is True
    assert request.parameters == {}
    assert request.secret_parameters == {}
    assert request.environment == {}
    assert request.volumes == []
    assert request.build is None
    assert request.command is None


def test_minimal_relic_request_is_accepted_with_relic_defaults():
    relic = parse_request(RelicStartRequest, dict(RELIC))

    assert relic.resource_limits.memory_mb == 1024
    assert relic.resource_limits.cpu_limit == 2.0
    assert relic.resource_limits.timeout_seconds == 300
    assert relic.port == 8000
    assert relic.health_check_endpoint == "/health"
    assert relic.create_private_network is True
    assert relic.ports is None


def test_resource_limits_defaults_are_512_mb_one_core_300_seconds():
    limits = ResourceLimits()

    assert (limits.memory_mb, limits.cpu_limit, limits.timeout_seconds) == (512, 1.0, 300)
    assert limits.pids_limit is None


def test_fully_specified_tool_request_keeps_every_value():
    data = with_changes(
        TOOL,
        {
            "command": ["sh", "-c", "echo hi"],
            "parameters": {"COUNT": 3, "NAME": "x"},
            "secret_parameters": {"TOKEN": "s3cr3t"},
            "environment": {"LANG": "C.UTF-8"},
            "resource_limits": {
                "memory_mb": 64,
                "cpu_limit": 0.5,
                "timeout_seconds": 10,
                "pids_limit": 32,
            },
            "network_mode": "session",
            "volumes": [{"source": "cache", "target": "/cache", "read_only": True}],
            "cleanup": False,
        },
    )

    request = parse_request(ToolExecutionRequest, data)

    assert request.command == ["sh", "-c", "echo hi"]
    assert request.parameters == {"COUNT": 3, "NAME": "x"}
    assert request.resource_limits.pids_limit == 32
    assert request.network_mode == "session"
    assert request.volumes[0].is_bind is False
    assert request.volumes[0].read_only is True
    assert request.cleanup is False


def test_build_spec_can_replace_the_image():
    data = with_changes(TOOL, {"image": DROP, "build": {"dockerfile_inline": "FROM busybox"}})

    request = parse_request(ToolExecutionRequest, data)

    assert request.image is None
    assert request.build is not None
    assert request.build.dockerfile == "Dockerfile"
    assert request.build.dockerfile_inline == "FROM busybox"


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "library/busybox:1.36",
        "localhost:5000/a/b:tag",
        f"ghcr.io/o/r@sha256:{DIGEST}",
        f"busybox:1.36@sha256:{DIGEST}",
        "my-registry.example.com/team/tool_x:v1.2.3-rc1",
    ],
)
def test_valid_image_reference_is_accepted(image):
    assert parse_request(ToolExecutionRequest, with_changes(TOOL, {"image": image})).image == image


@pytest.mark.parametrize("session_id", ["a", "A" * 64, "sess_1.2-3", "0abc"])
def test_session_id_of_allowed_characters_up_to_64_is_accepted(session_id):
    data = with_changes(TOOL, {"session_id": session_id})

    assert parse_request(ToolExecutionRequest, data).session_id == session_id


def test_parse_request_returns_an_already_validated_model_unchanged():
    request = ToolExecutionRequest.model_validate(TOOL)

    assert parse_request(ToolExecutionRequest, request) is request


# -- rejected requests: the message names the field -------------------------------------------

BAD_TOOL_REQUESTS = [
    # wrong types
    ("session_id_int", {"session_id": 123}, "session_id"),
    ("tool_name_list", {"tool_name": ["x"]}, "tool_name"),
    ("image_int", {"image": 5}, "image"),
    ("memory_not_number", {"resource_limits": {"memory_mb": "lots"}}, "resource_limits.memory_mb"),
    ("memory_fraction", {"resource_limits": {"memory_mb": 1.5}}, "resource_limits.memory_mb"),
    ("cpu_not_number", {"resource_limits": {"cpu_limit": "fast"}}, "resource_limits.cpu_limit"),
    ("limits_not_object", {"resource_limits": 5}, "resource_limits"),
    ("environment_value_int", {"environment": {"A": 1}}, "environment.A"),
    ("parameters_not_object", {"parameters": "x"}, "parameters"),
    ("volumes_not_list", {"volumes": "x"}, "volumes"),
    ("cleanup_not_bool", {"cleanup": "maybe"}, "cleanup"),
    ("command_int", {"command": 5}, "command.str"),
    ("command_list_of_ints", {"command": [1, 2]}, "command.list[constrained-str].0"),
    # missing required fields
    ("missing_tool_name", {"tool_name": DROP}, "tool_name"),
    ("missing_session_id", {"session_id": DROP}, "session_id"),
    # empty and over-long strings
    ("empty_tool_name", {"tool_name": ""}, "tool_name"),
    ("empty_session_id", {"session_id": ""}, "session_id"),
    ("session_id_65_chars", {"session_id": "s" * 65}, "session_id"),
    ("tool_name_65_chars", {"tool_name": "t" * 65}, "tool_name"),
    ("empty_image", {"image": ""}, "image"),
    ("image_over_255", {"image": "a" * 256}, "image"),
    # invalid image references
    ("image_uppercase", {"image": "BusyBox"}, "image"),
    ("image_space", {"image": "busy box"}, "image"),
    ("image_double_colon", {"image": "a::b"}, "image"),
    ("image_trailing_colon", {"image": "busybox:"}, "image"),
    ("image_short_digest", {"image": "busybox@sha256:short"}, "image"),
    ("image_leading_slash", {"image": "/busybox"}, "image"),
    # zero / negative limits
    ("memory_zero", {"resource_limits": {"memory_mb": 0}}, "resource_limits.memory_mb"),
    ("memory_negative", {"resource_limits": {"memory_mb": -1}}, "resource_limits.memory_mb"),
    ("cpu_zero", {"resource_limits": {"cpu_limit": 0}}, "resource_limits.cpu_limit"),
    ("cpu_negative", {"resource_limits": {"cpu_limit": -0.5}}, "resource_limits.cpu_limit"),
    (
        "timeout_zero",
        {"resource_limits": {"timeout_seconds": 0}},
        "resource_limits.timeout_seconds",
    ),
    ("pids_zero", {"resource_limits": {"pids_limit": 0}}, "resource_limits.pids_limit"),
    # dangerous session ids
    ("session_slash", {"session_id": "a/b"}, "session_id"),
    ("session_dotdot", {"session_id": ".."}, "session_id"),
    ("session_semicolon", {"session_id": "a;rm"}, "session_id"),
    ("session_subshell", {"session_id": "$(x)"}, "session_id"),
    ("session_space", {"session_id": "a b"}, "session_id"),
    ("session_leading_dash", {"session_id": "-rf"}, "session_id"),
    ("session_trailing_newline", {"session_id": "abc\n"}, "session_id"),
    # bad environment variable names
    ("param_name_with_equals", {"parameters": {"A=B": 1}}, "parameters"),
    ("param_name_with_nul", {"parameters": {"A\x00B": 1}}, "parameters"),
    ("param_name_with_newline", {"parameters": {"A\nB": 1}}, "parameters"),
    ("param_name_leading_digit", {"parameters": {"1A": 1}}, "parameters"),
    ("param_name_empty", {"parameters": {"": 1}}, "parameters"),
    ("secret_name_with_dash", {"secret_parameters": {"A-B": "x"}}, "secret_parameters"),
    ("env_name_with_equals", {"environment": {"A=B": "x"}}, "environment"),
    ("env_value_with_nul", {"environment": {"A": "x\x00y"}}, "environment"),
    ("param_value_with_nul", {"parameters": {"A": "x\x00y"}}, "parameters"),
    # unknown fields
    ("unknown_privileged", {"privileged": True}, "privileged"),
    ("unknown_cap_add", {"cap_add": ["SYS_ADMIN"]}, "cap_add"),
    ("unknown_limit_field", {"resource_limits": {"swap_mb": 1}}, "resource_limits.swap_mb"),
    ("network_mode_host", {"network_mode": "host"}, "network_mode"),
    ("network_mode_container", {"network_mode": "container:abc"}, "network_mode"),
    # volumes
    (
        "volume_relative_source",
        {"volumes": [{"source": "a/b", "target": "/x"}]},
        "volumes.0.source",
    ),
    ("volume_relative_target", {"volumes": [{"source": "v", "target": "x"}]}, "volumes.0.target"),
    (
        "volume_source_newline",
        {"volumes": [{"source": "/a\nb", "target": "/x"}]},
        "volumes.0.source",
    ),
    # builds
    ("build_relative_context", {"image": DROP, "build": {"context": "ctx"}}, "build"),
    ("build_without_source", {"image": DROP, "build": {}}, "build"),
    (
        "build_bad_tag",
        {"image": DROP, "build": {"dockerfile_inline": "FROM x", "tag": "Bad Tag"}},
        "build",
    ),
]


@pytest.mark.parametrize(
    ("changes", "field"),
    [pytest.param(changes, field, id=name) for name, changes, field in BAD_TOOL_REQUESTS],
)
def test_bad_tool_request_is_rejected_naming_the_field(changes, field):
    message = rejection(ToolExecutionRequest, with_changes(TOOL, changes))

    assert message.startswith("invalid ToolExecutionRequest: ")
    assert f"{field}:" in message


BAD_RELIC_REQUESTS = [
    ("missing_relic_name", {"relic_name": DROP}, "relic_name"),
    ("health_without_slash", {"health_check_endpoint": "health"}, "health_check_endpoint"),
    ("health_with_space", {"health_check_endpoint": "/he alth"}, "health_check_endpoint"),
    ("health_with_newline", {"health_check_endpoint": "/h\nx"}, "health_check_endpoint"),
    ("port_zero", {"port": 0}, "port"),
    ("port_too_high", {"port": 65536}, "port"),
    ("mapped_container_port_too_high", {"ports": {"70000": 80}}, "ports"),
    ("mapped_host_port_zero", {"ports": {"80": 0}}, "ports"),
    ("health_timeout_zero", {"health_timeout_seconds": 0}, "health_timeout_seconds"),
    ("relic_unknown_field", {"privileged": True}, "privileged"),
]


@pytest.mark.parametrize(
    ("changes", "field"),
    [pytest.param(changes, field, id=name) for name, changes, field in BAD_RELIC_REQUESTS],
)
def test_bad_relic_request_is_rejected_naming_the_field(changes, field):
    message = rejection(RelicStartRequest, with_changes(RELIC, changes))

    assert message.startswith("invalid RelicStartRequest: ")
    assert f"{field}:" in message


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        pytest.param({"build": {"dockerfile_inline": "FROM x"}}, ("image", "build"), id="both"),
        pytest.param({"image": DROP}, ("image", "build"), id="neither"),
        pytest.param({"image": None}, ("image", "build"), id="image_null_no_build"),
    ],
)
def test_request_needs_exactly_one_of_image_or_build(changes, words):
    message = rejection(ToolExecutionRequest, with_changes(TOOL, changes))

    assert "exactly one of image or build" in message
    assert all(word in message for word in words)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("   ", id="blank"),
        pytest.param("", id="empty"),
        pytest.param("a\x00b", id="nul"),
    ],
)
def test_command_string_must_be_non_empty_and_free_of_nul(command):
    message = rejection(ToolExecutionRequest, with_changes(TOOL, {"command": command}))

    assert "command must be non-empty and contain no NUL" in message


@pytest.mark.parametrize(
    ("data", "type_name"),
    [
        pytest.param([TOOL], "list", id="list"),
        pytest.param("busybox", "str", id="string"),
        pytest.param(None, "NoneType", id="none"),
        pytest.param(42, "int", id="number"),
    ],
)
def test_non_object_request_is_rejected_naming_the_request(data, type_name):
    message = rejection(ToolExecutionRequest, data)

    assert message.startswith("request: expected a JSON object for ToolExecutionRequest")
    assert message.endswith(f"got {type_name}")


def test_rejection_is_an_orchestrator_error_chained_to_the_validation_error():
    with pytest.raises(InvalidRequest) as info:
        parse_request(ToolExecutionRequest, with_changes(TOOL, {"session_id": "a/b"}))

    assert isinstance(info.value, OrchestratorError)
    assert info.value.__cause__ is not None
    assert type(info.value.__cause__).__name__ == "ValidationError"


def test_every_offending_field_is_named_in_one_message():
    data = with_changes(TOOL, {"session_id": "a b", "tool_name": DROP, "privileged": True})

    message = rejection(ToolExecutionRequest, data)

    for field in ("session_id:", "tool_name:", "privileged:"):
        assert field in message
    assert message.count("; ") == 2


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param({"parameters": {"A\n": 1}}, "parameters", id="param_trailing_newline"),
        pytest.param({"environment": {"A\n": "x"}}, "environment", id="env_trailing_newline"),
        pytest.param({"image": "busybox\n"}, "image", id="image_trailing_newline"),
    ],
)
def test_trailing_newline_in_env_name_or_image_is_rejected(data, field):
    message = rejection(ToolExecutionRequest, with_changes(TOOL, data))

    assert f"{field}:" in message


def test_cpu_limit_below_docker_minimum_is_rejected():
    data = with_changes(TOOL, {"resource_limits": {"cpu_limit": 1e-10}})

    assert "resource_limits.cpu_limit:" in rejection(ToolExecutionRequest, data)


# -- overlapping variables and redaction ---------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"parameters": {"X": 1}, "secret_parameters": {"X": "s"}}, id="param_secret"),
        pytest.param({"parameters": {"X": 1}, "environment": {"X": "e"}}, id="param_env"),
        pytest.param({"secret_parameters": {"X": "s"}, "environment": {"X": "e"}}, id="secret_env"),
    ],
)
def test_variable_given_in_two_places_is_rejected_naming_it(changes):
    message = rejection(ToolExecutionRequest, with_changes(TOOL, changes))

    assert "variables given twice: X" in message


def test_redacted_request_hides_secret_values_but_keeps_their_names():
    request = parse_request(
        ToolExecutionRequest,
        with_changes(
            TOOL,
            {
                "parameters": {"QUERY": "visible"},
                "secret_parameters": {"API_TOKEN": "hunter2-secret", "PASSWORD": 1234567},
                "environment": {"LANG": "C"},
            },
        ),
    )

    redacted = request.redacted()

    assert redacted["secret_parameters"] == {"API_TOKEN": "***", "PASSWORD": "***"}
    assert redacted["parameters"] == {"QUERY": "visible"}
    assert redacted["environment"] == {"LANG": "C"}
    assert redacted["session_id"] == "sess-1"
    text = json.dumps(redacted)
    assert "hunter2-secret" not in text
    assert "1234567" not in text
    assert request.secret_parameters["API_TOKEN"] == "hunter2-secret"  # model untouched


def test_redacted_request_is_plain_json_and_validates_back_with_masked_secrets():
    request = parse_request(
        ToolExecutionRequest, with_changes(TOOL, {"secret_parameters": {"K": 1}})
    )

    round_trip = ToolExecutionRequest.model_validate(json.loads(json.dumps(request.redacted())))

    assert round_trip.secret_parameters == {"K": "***"}
    assert round_trip.image == "busybox"
