"""Secret parameters between client and worker: the encrypted wire form (core.secrets), the
client that refuses to send them in plain text, masked task arguments (core.redaction and
tasks.base) and the worker that decrypts them in memory only (tool runs and relics)."""

from __future__ import annotations

import base64
import json
from typing import Any

import celery.app.task
import pytest
from celery import Celery
from cryptography.fernet import Fernet
from kombu import Message

from orchestrator.client.sync import OrchestratorClient
from orchestrator.core import redaction, secrets
from orchestrator.core.specs import relic_spec, secret_environment
from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import Forbidden, InvalidRequest, RelicError, RelicExited
from orchestrator.models import RelicStartRequest, ToolExecutionRequest
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.worker import health, relics
from orchestrator.worker.execution import run_execution
from orchestrator.worker.runtime import Runtime
from tasks import runtime as task_runtime
from tasks.base import RedactingRequest, SecretTask, seal_call

KEY = Fernet.generate_key().decode()
OTHER_KEY = Fernet.generate_key().decode()
RING = secrets.Keyring([KEY])
SECRET = "s3cr3t-hunter2-value"


def tool(**fields: Any) -> ToolExecutionRequest:
    base: dict[str, Any] = {
        "session_id": "s1",
        "tool_name": "echo",
        "image": "busybox:latest",
        "command": ["sh", "-c", "echo hi"],
    }
    return ToolExecutionRequest.model_validate({**base, **fields})


def relic(**fields: Any) -> RelicStartRequest:
    base = {"session_id": "s1", "relic_name": "db", "image": "svc:1", "port": 8000}
    return RelicStartRequest.model_validate({**base, **fields})


def everything(value: Any) -> str:
    return json.dumps(value, default=str)


# -- the wire form ---------------------------------------------------------------------------


def test_a_sealed_value_holds_no_plain_text_and_opens_under_its_own_name():
    sealed = secrets.seal({"API_KEY": SECRET, "PIN": 1234}, RING)

    assert all(secrets.is_encrypted(v) for v in sealed.values())
    text = everything(sealed)
    assert SECRET not in text and base64.b64encode(SECRET.encode()).decode() not in text
    assert secrets.reveal(sealed, RING) == {"API_KEY": SECRET, "PIN": 1234}


def test_a_token_moved_to_another_variable_is_forbidden():
    sealed = secrets.encrypt_value("API_KEY", SECRET, RING)

    with pytest.raises(Forbidden, match=r"secret_parameters\.EXFIL: .*made for another variable"):
        secrets.decrypt_value("EXFIL", sealed, RING)


def test_an_encrypted_value_without_a_key_or_with_another_key_names_the_setting():
    sealed = secrets.encrypt_value("API_KEY", SECRET, RING)

    with pytest.raises(InvalidRequest, match="no ORCHESTRATOR_SECRET_KEY"):
        secrets.decrypt_value("API_KEY", sealed, None)
    with pytest.raises(InvalidRequest, match="does not open with this worker's ORCHESTRATOR_SEC"):
        secrets.decrypt_value("API_KEY", sealed, secrets.Keyring([OTHER_KEY]))
    altered = {secrets.ENCRYPTED_FIELD: sealed[secrets.ENCRYPTED_FIELD][:-4] + "AAAA"}
    with pytest.raises(InvalidRequest, match="altered"):
        secrets.decrypt_value("API_KEY", altered, RING)


def test_rotation_the_first_key_encrypts_and_every_key_decrypts():
    old = secrets.encrypt_value("K", SECRET, secrets.Keyring([OTHER_KEY]))
    ring = secrets.keyring(f"{KEY}, {OTHER_KEY}")
    assert ring is not None

    assert secrets.decrypt_value("K", old, ring) == SECRET
    new = secrets.encrypt_value("K", SECRET, ring)
    assert secrets.decrypt_value("K", new, RING) == SECRET


def test_plain_values_pass_through_the_worker_for_plain_celery_clients():
    assert secrets.reveal({"K": SECRET, "N": 3}, None) == {"K": SECRET, "N": 3}


def test_a_decrypted_value_with_nul_is_refused():
    with pytest.raises(InvalidRequest, match="NUL"):
        secrets.decrypt_value("K", secrets.encrypt_value("K", "a\x00b", RING), RING)


def test_a_malformed_key_fails_the_settings_without_showing_it():
    with pytest.raises(InvalidRequest, match="ORCHESTRATOR_SECRET_KEY: .*key 2 is not a Fernet"):
        Settings.from_env({"ORCHESTRATOR_SECRET_KEY": f"{KEY},not-a-key-at-all"})
    settings = Settings.from_env({"ORCHESTRATOR_SECRET_KEY": KEY})
    assert KEY not in repr(settings) and KEY not in settings.model_dump_json()
    assert secrets.settings_keyring(settings) is not None
    assert secrets.settings_keyring(Settings()) is None


def test_seal_payload_refuses_plain_secrets_without_a_key_naming_both_settings():
    payload = tool(secret_parameters={"API_KEY": SECRET}).model_dump(mode="json")

    with pytest.raises(Forbidden) as info:
        secrets.seal_payload(payload, None, allow_plaintext=False)
    message = str(info.value)
    assert "secret_parameters (API_KEY)" in message and SECRET not in message
    assert (
        "ORCHESTRATOR_SECRET_KEY" in message
        and "ORCHESTRATOR_DEV_ALLOW_PLAINTEXT_SECRETS" in message
    )
    assert secrets.seal_payload(payload, None, allow_plaintext=True) is payload
    no_secrets = tool().model_dump(mode="json")
    assert secrets.seal_payload(no_secrets, None, allow_plaintext=False) is no_secrets


# -- masking task arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        pytest.param([{"secret_parameters": {"K": SECRET}}], {}, id="request-positional"),
        pytest.param([], {"request": {"secret_parameters": {"K": SECRET}}}, id="request-kw"),
        pytest.param([], {"tool_name": "x", "secret_parameters": {"K": SECRET}}, id="fields"),
        pytest.param([{"secret_parameters": SECRET}], {}, id="not-a-mapping"),
        pytest.param([{"secret_parameters": {"K": {"$encrypted": "tok"}}}], {}, id="encrypted"),
    ],
)
def test_redact_call_masks_secret_parameters_in_every_shape(args, kwargs):
    before = everything([args, kwargs])

    shown_args, shown_kwargs = redaction.redact_call(args, kwargs)

    assert redaction.carries_secrets(args, kwargs)
    assert SECRET not in everything([shown_args, shown_kwargs])
    assert "tok" not in everything([shown_args, shown_kwargs])
    assert everything([args, kwargs]) == before  # copies: the run gets the real values


def test_calls_without_secrets_are_shown_as_they_are():
    args = [{"tool_name": "x", "secret_parameters": {}}]

    assert not redaction.carries_secrets(args, {"requeued": True})
    assert redaction.redact_call(args, {"requeued": True}) == (args, {"requeued": True})


def test_call_repr_is_masked_and_bounded():
    args = [{"command": "x" * 5000, "secret_parameters": {"K": SECRET}}]

    argsrepr, kwargsrepr = redaction.call_repr(args, {"requeued": False})

    assert len(argsrepr) == redaction.REPR_LIMIT and argsrepr.endswith("...")
    assert SECRET not in argsrepr and kwargsrepr == "{'requeued': False}"
    assert redaction.call_repr([{"secret_parameters": {"K": SECRET}}], {})[0] == (
        "[{'secret_parameters': {'K': '***'}}]"
    )


def test_redact_exception_masks_every_form_and_drops_the_chain():
    try:
        try:
            raise ValueError(f"input_value={{'K': '{SECRET}'}}")
        except ValueError as inner:
            raise RelicExited(
                f"last log lines: {base64.b64encode(SECRET.encode()).decode()}"
            ) from inner
    except RelicExited as exc:
        redaction.redact_exception(exc, redaction.secret_forms([SECRET]))
        caught = exc

    assert str(caught) == "last log lines: ***" and caught.args == ("last log lines: ***",)
    assert caught.__cause__ is None and caught.__context__ is None


# -- specs -----------------------------------------------------------------------------------


def test_a_spec_is_never_built_from_an_encrypted_value():
    with pytest.raises(InvalidRequest, match=r"secret_parameters\.K: still encrypted"):
        secret_environment(secrets.seal({"K": SECRET}, RING))


def test_a_relic_spec_puts_decrypted_secrets_in_the_environment():
    request = relic(secret_parameters={"DB_PASSWORD": SECRET, "N": 5}, environment={"A": "b"})

    spec = relic_spec(
        request,
        relic_id="r1",
        image="svc:1",
        settings=Settings(host_name="h1"),
        expires_at=0,
        network=None,
        volume_names={},
    )

    assert spec.environment == {"DB_PASSWORD": SECRET, "N": "5", "A": "b"}


def test_relic_requests_keep_secrets_apart_from_the_environment_and_redact_them():
    with pytest.raises(ValueError, match="variables given twice: X"):
        relic(secret_parameters={"X": "1"}, environment={"X": "2"})
    with pytest.raises(ValueError, match="not a valid environment variable name"):
        relic(secret_parameters={"A-B": "1"})
    assert relic(secret_parameters={"X": SECRET}).redacted()["secret_parameters"] == {"X": "***"}


# -- the client ------------------------------------------------------------------------------


class RecordingApp:
    """Stands in for the client's Celery app: records each send."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_task(self, name: str, args: list[Any], **options: Any) -> Any:
        self.sent.append({"name": name, "args": args, **options})
        return type("Result", (), {"id": "t1", "state": "PENDING"})()

    def close(self) -> None:
        return None


def client(**settings: Any) -> tuple[OrchestratorClient, RecordingApp]:
    app = RecordingApp()
    base = {"broker_url": "memory://", "result_backend": "cache+memory://"}
    return OrchestratorClient(Settings(**{**base, **settings}), app=app), app  # type: ignore[arg-type]


def test_the_client_encrypts_every_secret_and_sends_a_masked_bounded_argsrepr():
    c, app = client(secret_key=KEY)

    c.execute_tool(tool(secret_parameters={"API_KEY": SECRET}))
    c.execute_tool(tool(secret_parameters={"API_KEY": SECRET}, command="x" * 3000))

    sent, long = app.sent
    assert SECRET not in everything(app.sent)
    assert secrets.reveal(sent["args"][0]["secret_parameters"], RING) == {"API_KEY": SECRET}
    assert "'API_KEY': '***'" in sent["argsrepr"] and "$encrypted" not in sent["argsrepr"]
    assert len(long["argsrepr"]) == redaction.REPR_LIMIT


def test_without_a_key_the_client_refuses_secrets_and_sends_nothing():
    c, app = client()

    with pytest.raises(Forbidden, match="set ORCHESTRATOR_SECRET_KEY"):
        c.execute_tool(tool(secret_parameters={"API_KEY": SECRET}))

    assert app.sent == []
    c.execute_tool(tool())  # a request without secrets needs no key
    assert len(app.sent) == 1


def test_the_development_flag_lets_plain_secrets_through():
    c, app = client(dev_allow_plaintext_secrets=True)

    c.execute_tool(tool(secret_parameters={"API_KEY": SECRET}))

    assert app.sent[0]["args"][0]["secret_parameters"] == {"API_KEY": SECRET}
    assert SECRET not in app.sent[0]["argsrepr"]


def test_relic_starts_are_encrypted_by_the_client_too(redis):
    c, app = client(secret_key=KEY)
    c._redis = redis
    c._wait = lambda sent, timeout: {  # type: ignore[method-assign]
        "relic_id": "r1",
        "relic_name": "db",
        "session_id": "s1",
        "container_name": "c",
        "status": "running",
    }

    c.start_relic(relic(secret_parameters={"DB_PASSWORD": SECRET}))

    assert SECRET not in everything(app.sent)
    assert secrets.is_encrypted(app.sent[0]["args"][0]["secret_parameters"]["DB_PASSWORD"])


# -- the worker's Celery side ----------------------------------------------------------------


@pytest.fixture
def celery_app(redis) -> Any:
    app = Celery("secrets-test", set_as_current=False)
    task_runtime.reset_runtime(Runtime(Settings(host_name="h1", secret_key=KEY), redis))
    yield app
    task_runtime.reset_runtime(None)


def secret_task(app: Celery) -> Any:
    @app.task(bind=True, base=SecretTask, name="test.secret", shared=False)
    def run(self: Any, request: Any = None, **fields: Any) -> None:
        return None

    return run


def message(args: list[Any], kwargs: dict[str, Any], argsrepr: str) -> Message:
    body = json.dumps([args, kwargs, {"callbacks": None, "errbacks": None, "chain": None}])
    headers = {"id": "t1", "task": "test.secret", "argsrepr": argsrepr, "kwargsrepr": "{}"}
    return Message(
        body=body, headers=headers, content_type="application/json", content_encoding="utf-8"
    )


def test_the_worker_shows_masked_arguments_whatever_argsrepr_the_sender_put(celery_app):
    task = secret_task(celery_app)
    args = [{"tool_name": "x", "secret_parameters": {"K": SECRET}}]

    request = RedactingRequest(message(args, {}, repr(args)), app=celery_app, task=task)

    assert request.argsrepr == "[{'tool_name': 'x', 'secret_parameters': {'K': '***'}}]"
    assert SECRET not in everything(request.info()) + everything(request.info(safe=True))
    context = request._context  # what revoked / lost tasks are stored with
    assert SECRET not in everything([context.args, context.kwargs])
    assert request.args == args  # the run itself gets the real arguments
    assert task.Request == "tasks.base:RedactingRequest"


def test_before_start_masks_what_celery_stores_and_retry_resends_the_real_arguments(
    celery_app, monkeypatch
):
    task = secret_task(celery_app)
    args = [{"tool_name": "x", "secret_parameters": {"K": SECRET}}]
    retried: list[Any] = []
    monkeypatch.setattr(
        celery.app.task.Task, "retry", lambda self, args, kwargs, *a, **o: retried.append(args)
    )
    task.push_request(args=args, kwargs={}, id="t1")
    try:
        task.before_start("t1", args, {})
        stored = [task.request.args, task.request.kwargs]
        task.retry(exc=RuntimeError("engine down"))
        assert task.wire_arguments() == (args, {})
    finally:
        task.pop_request()

    assert SECRET not in everything(stored)
    assert retried == [args]


def test_apply_async_encrypts_plain_secrets_and_masks_argsrepr(celery_app, monkeypatch):
    task = secret_task(celery_app)
    sent: list[Any] = []
    monkeypatch.setattr(
        celery.app.task.Task,
        "apply_async",
        lambda self, args=None, kwargs=None, **o: sent.append((args, kwargs, o)),
    )

    task.apply_async(
        [{"tool_name": "x", "secret_parameters": {"K": SECRET}}],
        {"requeued": False},
        argsrepr=f"[{{'secret_parameters': {{'K': '{SECRET}'}}}}]",
    )

    ((args, kwargs, options),) = sent
    assert SECRET not in everything(sent)
    assert secrets.reveal(args[0]["secret_parameters"], RING) == {"K": SECRET}
    assert options["argsrepr"] == "[{'tool_name': 'x', 'secret_parameters': {'K': '***'}}]"
    assert kwargs == {"requeued": False}


def test_seal_call_seals_every_shape_and_keeps_plain_text_without_a_key():
    payload = {"secret_parameters": {"K": SECRET}}

    args, kwargs = seal_call([payload], {"request": payload, "secret_parameters": {"K": 1}}, RING)

    assert SECRET not in everything([args, kwargs])
    assert secrets.is_encrypted(kwargs["secret_parameters"]["K"])
    assert seal_call([payload], {}, None) == ([payload], {})


def test_errors_of_a_call_with_secrets_leave_without_their_chain(celery_app):
    task = secret_task(celery_app)
    args = [{"secret_parameters": {"K": SECRET}}]
    task.push_request(args=args, kwargs={}, id="t1")
    try:
        with pytest.raises(InvalidRequest) as info, task.containing_errors():
            try:
                raise ValueError(SECRET)
            except ValueError as exc:
                raise InvalidRequest("invalid request") from exc
    finally:
        task.pop_request()

    assert info.value.__cause__ is None and info.value.__context__ is None


# -- the worker decrypts in memory only ------------------------------------------------------


@pytest.fixture
def keyed_rt(redis, engine) -> Runtime:
    settings = Settings(host_name="h1", secret_key=KEY, wait_slice_seconds=0.05)
    return Runtime(settings, redis, engine=engine)


def dump_redis(redis) -> str:
    parts = []
    for key in redis.scan_iter("*"):
        kind = redis.type(key)
        if kind == b"string":
            parts.append(redis.get(key))
        elif kind == b"hash":
            parts.extend(redis.hgetall(key).values())
        elif kind == b"stream":
            parts.extend(v for _, fields in redis.xrange(key) for v in fields.values())
        elif kind in (b"set", b"list"):
            parts.extend(redis.smembers(key) if kind == b"set" else redis.lrange(key, 0, -1))
    return b"\n".join(p if isinstance(p, bytes) else str(p).encode() for p in parts).decode(
        errors="replace"
    )


def test_a_tool_gets_the_decrypted_secret_and_nothing_stored_holds_it(keyed_rt, engine):
    printed = f"{SECRET} {base64.b64encode(SECRET.encode()).decode()}\n".encode()
    engine.add_image("busybox:latest", FakeProgram(stdout=printed, stderr=printed))
    sealed = tool(secret_parameters=secrets.seal({"API_KEY": SECRET}, RING))

    result = run_execution(keyed_rt, sealed, "e1")

    spec = engine.called("create_container")[0][0]
    assert spec.environment["API_KEY"] == SECRET
    assert result.stdout == "*** ***\n" and result.stderr == "*** ***\n"
    stored = dump_redis(keyed_rt.redis)
    assert SECRET not in stored and "$encrypted" not in stored
    assert json.loads(keyed_rt.executions.get("e1").request)["secret_parameters"] == {
        "API_KEY": "***"
    }


def test_a_tool_with_an_encrypted_secret_and_no_key_on_the_worker_is_refused(
    redis, engine: FakeEngine
):
    rt = Runtime(Settings(host_name="h1"), redis, engine=engine)
    sealed = tool(secret_parameters=secrets.seal({"API_KEY": SECRET}, RING))

    with pytest.raises(InvalidRequest, match="no ORCHESTRATOR_SECRET_KEY"):
        run_execution(rt, sealed, "e1")

    assert engine.called("create_container") == []


@pytest.fixture
def healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "probe", lambda *a, **k: True)


def test_a_relic_gets_its_decrypted_secret_and_the_registry_never_holds_it(
    keyed_rt, engine, healthy
):
    engine.add_image("svc:1", FakeProgram(run_seconds=None))
    sealed = relic(secret_parameters=secrets.seal({"DB_PASSWORD": SECRET}, RING))

    info = relics.start_relic_once(keyed_rt, sealed, "r1")

    spec = engine.called("create_container")[0][0]
    assert spec.environment["DB_PASSWORD"] == SECRET
    assert SECRET not in info.model_dump_json()
    stored = dump_redis(keyed_rt.redis)
    assert SECRET not in stored and "$encrypted" not in stored
    entry = keyed_rt.executions.get("r1")
    assert json.loads(entry.request)["secret_parameters"] == {"DB_PASSWORD": "***"}
    assert entry.has_secrets


def test_a_relic_that_prints_its_secret_and_exits_fails_with_the_secret_masked(
    keyed_rt, engine, monkeypatch
):
    monkeypatch.setattr(health, "probe", lambda *a, **k: False)
    engine.add_image(
        "svc:1", FakeProgram(run_seconds=0.05, exit_code=1, stderr=f"pw={SECRET}\n".encode())
    )
    sealed = relic(secret_parameters=secrets.seal({"DB_PASSWORD": SECRET}, RING))

    with pytest.raises(RelicExited) as info:
        relics.start_relic_once(keyed_rt, sealed, "r1")

    assert "pw=***" in str(info.value) and SECRET not in str(info.value)
    assert SECRET not in everything(info.value.args)


def test_a_relic_start_sent_again_from_the_registry_without_a_container_is_refused(
    keyed_rt, engine, healthy
):
    engine.add_image("svc:1", FakeProgram(run_seconds=None))
    stored = relic(secret_parameters={"DB_PASSWORD": SECRET}).redacted()
    keyed_rt.executions.start("r1", {"request": stored, "has_secrets": "1"})

    with pytest.raises(RelicError, match="secret parameters are never stored"):
        relics.start_relic_once(keyed_rt, RelicStartRequest.model_validate(stored), "r1")

    assert engine.called("create_container") == []
    assert not keyed_rt.redis.exists(keys.relic("r1"))
