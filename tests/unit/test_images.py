"""Behaviour of :mod:`orchestrator.worker.images` on the in-memory engine: local images are
used as they are, missing ones pulled once per host (and remembered), builds refused
unless allowed, tagged only in the orchestrator's namespace from their whole input, run
with the server's limits and network policy, sent their context (``.dockerignore``
applied, size bounded), and the images the orchestrator brought reaped within a disk
budget."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import dockerfile
from orchestrator.core.types import BuildSpec as EngineBuild
from orchestrator.core.types import ContainerSpec, Image
from orchestrator.engine.docker_engine import build_params
from orchestrator.engine.fake import FakeEngine, FakeExec, FakeProgram
from orchestrator.errors import (
    DockerUnavailable,
    Forbidden,
    ImageBuildFailed,
    ImageNotFound,
    InvalidRequest,
    LimitExceeded,
    QuotaExceeded,
)
from orchestrator.models import BuildSpec, ToolExecutionRequest, parse_request
from orchestrator.settings import Settings
from orchestrator.state import images as tracking
from orchestrator.state.quotas import Quotas
from orchestrator.worker import janitor
from orchestrator.worker.images import (
    RecentImages,
    build_tag,
    check_build_request,
    context_tar,
    ensure_image,
    reap_images,
    resolve_image,
)
from orchestrator.worker.runtime import Runtime

SETTINGS = Settings.from_env({}, host_name="h1")
#: Builds allowed, everything else as shipped.
BUILDS = Settings.from_env({}, host_name="h1", allow_builds=True)
MIB = 1024 * 1024


def resolve(engine: FakeEngine, redis: Any, settings: Settings = SETTINGS, **kw: Any) -> str:
    states: list[str] = kw.pop("states", [])
    return resolve_image(
        engine,
        redis,
        settings,
        kw.pop("image", None),
        kw.pop("build", None),
        kw.pop("label", "Grep"),
        states.append,
    )


def sent_build(engine: FakeEngine) -> EngineBuild:
    [(spec,)] = engine.called("build_image")
    return spec


def names(tar_bytes: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        return {member.name: member for member in archive.getmembers()}


def read(tar_bytes: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        handle = archive.extractfile(name)
        assert handle is not None
        return handle.read()


# -- pulls ---------------------------------------------------------------------------------


def test_an_image_on_the_host_is_used_without_a_pull(engine, redis):
    states: list[str] = []

    assert resolve(engine, redis, image="busybox:latest", states=states) == "busybox:latest"

    assert engine.called("pull_image") == []
    assert states == []


def test_a_missing_image_is_pulled_and_reported_as_pulling(engine, redis):
    engine.registry["alpine:3.20"] = FakeProgram()
    states: list[str] = []

    assert resolve(engine, redis, image="alpine:3.20", states=states) == "alpine:3.20"

    assert engine.called("pull_image") == [("alpine:3.20",)]
    assert states == ["PULLING"]
    engine.inspect_image("alpine:3.20")  # now on the host


def test_concurrent_runs_of_a_missing_image_pull_it_once_per_host(engine, redis, monkeypatch):
    engine.registry["alpine:3.20"] = FakeProgram()
    pull = engine.pull_image

    def slow_pull(ref: str) -> Image:
        time.sleep(0.2)  # the others find the lock taken and wait for it
        return pull(ref)

    monkeypatch.setattr(engine, "pull_image", slow_pull)
    got: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: got.append(ensure_image(engine, redis, SETTINGS, "alpine:3.20"))
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)

    assert got == ["alpine:3.20"] * 4
    assert engine.called("pull_image") == [("alpine:3.20",)]


def test_an_image_that_cannot_be_pulled_is_not_found_naming_it_the_host_and_the_reason(
    engine, redis
):
    with pytest.raises(ImageNotFound) as info:
        resolve(engine, redis, image="nope:1.0")

    message = str(info.value)
    assert message.startswith("image: 'nope:1.0' is not on host h1 and could not be pulled: ")
    assert "pull access denied" in message
    assert isinstance(info.value.__cause__, ImageNotFound)


def test_an_unreachable_engine_during_a_pull_stays_unavailable_for_a_retry(engine, redis):
    engine.fail_next("pull_image", DockerUnavailable("pull image x: engine unreachable"))

    with pytest.raises(DockerUnavailable, match="engine unreachable"):
        resolve(engine, redis, image="alpine:3.20")


# -- pull and use records ------------------------------------------------------------------


def test_a_pull_is_remembered_for_the_host_and_every_use_is_timed(engine, redis):
    engine.registry["alpine:3.20"] = FakeProgram()

    resolve(engine, redis, image="alpine:3.20")
    resolve(engine, redis, image="busybox:latest")

    assert tracking.pulled(redis, "h1") == {"alpine:3.20"}  # busybox was there: not ours
    assert set(tracking.last_used(redis, "h1")) == {"alpine:3.20", "busybox:latest"}
    assert tracking.pulled(redis, "h2") == set()


# -- builds: off unless allowed --------------------------------------------------------------

INLINE = BuildSpec(dockerfile_inline="FROM busybox\nRUN true\n")


def test_builds_are_refused_by_default_naming_the_field_rule_and_setting(engine, redis):
    with pytest.raises(Forbidden) as info:
        resolve(engine, redis, build=INLINE)

    message = str(info.value)
    assert message.startswith("build: ")
    assert "rule:" in message
    assert "ORCHESTRATOR_ALLOW_BUILDS=true" in message
    assert engine.called("build_image") == []
    assert engine.called("pull_image") == []


def test_a_context_build_is_refused_by_default_before_its_directory_is_read(
    engine, redis, tmp_path
):
    settings = Settings.from_env({}, host_name="h1", allowed_build_roots=[str(tmp_path)])

    with pytest.raises(Forbidden, match="ORCHESTRATOR_ALLOW_BUILDS"):
        resolve(engine, redis, settings, build=BuildSpec(context=str(tmp_path / "missing")))


# -- builds: tags only in our namespace, keyed by the whole input ----------------------------


def test_an_inline_dockerfile_is_built_alone_in_its_context_with_the_servers_limits(engine, redis):
    settings = BUILDS.model_copy(update={"build_cgroup_parent": "/orch-builds"})
    build = BuildSpec(dockerfile_inline="FROM busybox\n", buildargs={"V": "2"})
    states: list[str] = []

    tag = resolve(engine, redis, settings, build=build, states=states)

    sent = sent_build(engine)
    assert tag == sent.tag == build_tag(build, "Grep")
    assert tag.startswith("orchestrator-build/grep:")
    assert sent.dockerfile == "Dockerfile"
    assert sent.build_args == {"V": "2"}
    assert sent.network_mode == "none"  # RUN steps get no network
    assert (sent.memory_mb, sent.cpu_limit) == (2048, 2.0)
    assert sent.timeout_seconds == 600
    assert sent.cgroup_parent == "/orch-builds"
    assert list(names(sent.context_tar)) == ["Dockerfile"]
    assert read(sent.context_tar, "Dockerfile") == b"FROM busybox\n"
    assert states == ["BUILDING"]


def test_a_built_image_carries_the_orchestrators_labels(engine, redis):
    before = int(time.time())
    tag = resolve(engine, redis, BUILDS, build=replace_build(INLINE, tag="me/tool:1"))

    built = engine.inspect_image(tag).labels
    assert built["orchestrator.managed"] == "true"
    assert built["orchestrator.kind"] == "image"
    assert built["orchestrator.host"] == "h1"
    assert int(built["orchestrator.built-at"]) >= before
    assert built["orchestrator.requested-tag"] == "me/tool:1"


def test_a_requested_tag_naming_an_existing_image_never_touches_it(engine, redis):
    victim = engine.add_image("victim/app:1", FakeProgram(stdout=b"the operator's app\n"))
    attack = BuildSpec(dockerfile_inline="FROM busybox\nLABEL evil=1\n", tag="victim/app:1")

    tag = resolve(engine, redis, BUILDS, build=attack)

    assert engine.inspect_image("victim/app:1").id == victim.id  # the victim is untouched
    assert engine.program_of("victim/app:1").stdout == b"the operator's app\n"
    assert tag.startswith("orchestrator-build/") and tag != "victim/app:1"
    assert engine.inspect_image(tag).labels["evil"] == "1"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"buildargs": {"V": "2"}}, id="build_args"),
        pytest.param({"tag": "me/tool:2"}, id="requested_tag"),
        pytest.param({"dockerfile_inline": "FROM busybox\nRUN  true\n"}, id="dockerfile"),
    ],
)
def test_any_change_of_the_build_input_changes_the_tag(change):
    base = BuildSpec(dockerfile_inline="FROM busybox\nRUN true\n", buildargs={"V": "1"})

    assert build_tag(base, "t") != build_tag(replace_build(base, **change), "t")
    assert build_tag(base, "t") == build_tag(replace_build(base), "t")


def test_the_same_input_is_built_once_and_reused(engine, redis):
    first = resolve(engine, redis, BUILDS, build=INLINE)
    states: list[str] = []
    again = resolve(engine, redis, BUILDS, build=INLINE, states=states)

    assert first == again
    assert len(engine.called("build_image")) == 1
    assert states == []  # found, not built


def test_an_image_at_our_tag_that_no_build_of_ours_made_is_rebuilt(engine, redis):
    tag = build_tag(INLINE, "Grep")
    engine.add_image(tag)  # not labelled as ours

    assert resolve(engine, redis, BUILDS, build=INLINE) == tag

    assert len(engine.called("build_image")) == 1
    assert engine.inspect_image(tag).labels["orchestrator.kind"] == "image"


def test_a_context_change_changes_the_tag(engine, redis, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY app.py /\n")
    (tmp_path / "app.py").write_text("print(1)\n")
    settings = BUILDS.model_copy(update={"allowed_build_roots": [str(tmp_path)]})
    build = BuildSpec(context=str(tmp_path))

    first = resolve(engine, redis, settings, build=build)
    (tmp_path / "app.py").write_text("print(2)\n")
    second = resolve(engine, redis, settings, build=build)

    assert first != second
    assert len(engine.called("build_image")) == 2


@pytest.mark.parametrize(
    ("name", "repository"),
    [("Grep", "grep"), ("My..Tool-", "my-tool"), ("a_b.c", "a-b-c"), ("---", "build")],
)
def test_the_repository_is_the_tool_name_in_dockers_grammar(name, repository):
    assert build_tag(INLINE, name).split(":")[0] == f"orchestrator-build/{repository}"


def test_a_failed_build_is_reported_as_such(engine, redis):
    engine.fail_next("build_image", ImageBuildFailed("build image x: RUN false: exit 1"))

    with pytest.raises(ImageBuildFailed, match="exit 1"):
        resolve(engine, redis, BUILDS, build=INLINE)


def test_a_build_past_its_time_limit_is_stopped_naming_the_setting(engine, redis):
    engine.add_image("slow:1", FakeProgram(on_exec=lambda spec: FakeExec(run_seconds=30)))
    settings = BUILDS.model_copy(update={"build_timeout_seconds": 1})
    started = time.monotonic()

    with pytest.raises(ImageBuildFailed) as info:
        resolve(engine, redis, settings, build=BuildSpec(dockerfile_inline="FROM slow:1\nRUN x\n"))

    assert time.monotonic() - started < 5
    assert "time limit" in str(info.value)
    assert "ORCHESTRATOR_BUILD_TIMEOUT_SECONDS" in str(info.value)


def test_an_image_over_the_size_cap_is_removed_and_refused(engine, redis, monkeypatch):
    build = engine.build_image

    def large(spec: EngineBuild) -> Image:
        built = build(spec)
        engine.images[spec.tag] = replace(built, size_bytes=3 * MIB)
        return engine.images[spec.tag]

    monkeypatch.setattr(engine, "build_image", large)
    settings = BUILDS.model_copy(update={"max_built_image_mb": 2})

    with pytest.raises(LimitExceeded) as info:
        resolve(engine, redis, settings, build=INLINE)

    assert str(info.value).startswith("build: the image built is 3 MB, over the 2 MB")
    assert "ORCHESTRATOR_MAX_BUILT_IMAGE_MB" in str(info.value)
    with pytest.raises(ImageNotFound):
        engine.inspect_image(build_tag(INLINE, "Grep"))


# -- builds: the Dockerfile's path -----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["../x", "/etc/passwd", "/dev/zero", "/proc/self/environ", "a/../../b", "x\x00y", "a\nb"],
)
def test_a_dockerfile_path_leaving_the_context_is_refused_naming_the_field(path):
    request = {
        "tool_name": "t",
        "session_id": "s",
        "build": {"context": "/srv/ctx", "dockerfile": path},
    }

    with pytest.raises(InvalidRequest) as info:
        parse_request(ToolExecutionRequest, request)

    assert "build.dockerfile: " in str(info.value)


@pytest.mark.parametrize("path", ["Dockerfile", "docker/Dockerfile.dev", "./Dockerfile", "a..b"])
def test_a_relative_dockerfile_path_inside_the_context_is_accepted(path):
    assert BuildSpec(context="/srv/ctx", dockerfile=path).dockerfile == path


def context_settings(root: Path) -> Settings:
    return BUILDS.model_copy(update={"allowed_build_roots": [str(root)]})


def test_a_dockerfile_symlink_to_outside_the_context_is_refused(engine, redis, tmp_path):
    context = tmp_path / "ctx"
    context.mkdir()
    (tmp_path / "secret").write_text("FROM busybox\n")
    (context / "Dockerfile").symlink_to(tmp_path / "secret")

    with pytest.raises(Forbidden) as info:
        resolve(engine, redis, context_settings(tmp_path), build=BuildSpec(context=str(context)))

    assert str(info.value).startswith("build.dockerfile: 'Dockerfile' resolves through a symbolic")
    assert str(tmp_path) not in str(info.value)  # says nothing of where it leads
    assert engine.called("build_image") == []


@pytest.mark.parametrize("target", ["/dev/zero", "/proc/self/environ", "inside"])
def test_a_dockerfile_reached_through_any_symlink_is_refused(engine, redis, tmp_path, target):
    (tmp_path / "inside").write_text("FROM busybox\n")
    (tmp_path / "link").symlink_to(target)

    with pytest.raises(Forbidden, match="^build.dockerfile: 'link' resolves through"):
        resolve(
            engine,
            redis,
            context_settings(tmp_path),
            build=BuildSpec(context=str(tmp_path), dockerfile="link"),
        )


def test_a_dockerfile_that_is_no_regular_file_is_refused(engine, redis, tmp_path):
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    settings = context_settings(tmp_path)

    for name in ("dir", "fifo"):
        with pytest.raises(Forbidden, match=f"^build.dockerfile: '{name}' is not a regular file"):
            resolve(
                engine, redis, settings, build=BuildSpec(context=str(tmp_path), dockerfile=name)
            )
    with pytest.raises(InvalidRequest, match="^build.dockerfile: 'nope' is not in the build"):
        resolve(engine, redis, settings, build=BuildSpec(context=str(tmp_path), dockerfile="nope"))
    assert engine.called("build_image") == []


def test_a_context_directory_is_sent_with_its_dockerfile_path(engine, redis, tmp_path):
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile.dev").write_text("FROM busybox\nCOPY app.py /\n")
    (tmp_path / "app.py").write_text("print(1)\n")
    build = BuildSpec(context=str(tmp_path), dockerfile="docker/Dockerfile.dev", tag="me/a:1")

    resolve(engine, redis, context_settings(tmp_path), build=build)

    sent = sent_build(engine)
    assert sent.dockerfile == "docker/Dockerfile.dev"
    assert set(names(sent.context_tar)) == {"app.py", "docker", "docker/Dockerfile.dev"}
    assert read(sent.context_tar, "app.py") == b"print(1)\n"


def test_a_context_outside_the_allowed_build_roots_is_refused(engine, redis, tmp_path):
    settings = context_settings(tmp_path / "ok")

    with pytest.raises(Forbidden) as info:
        resolve(engine, redis, settings, build=BuildSpec(context=str(tmp_path)))

    assert str(info.value).startswith("build.context: ")
    assert "outside the allowed build roots" in str(info.value)
    assert "ORCHESTRATOR_ALLOWED_BUILD_ROOTS" in str(info.value)
    assert engine.called("build_image") == []


def test_a_context_that_is_not_a_directory_is_refused(engine, redis, tmp_path):
    with pytest.raises(InvalidRequest, match="is not a directory on the worker"):
        resolve(
            engine,
            redis,
            context_settings(tmp_path),
            build=BuildSpec(context=str(tmp_path / "missing")),
        )


def test_a_context_over_the_size_cap_is_refused_before_it_is_sent(engine, redis, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    (tmp_path / "big").write_bytes(b"x" * (2 * MIB))
    settings = BUILDS.model_copy(
        update={"allowed_build_roots": [str(tmp_path)], "max_build_context_mb": 1}
    )

    with pytest.raises(LimitExceeded) as info:
        resolve(engine, redis, settings, build=BuildSpec(context=str(tmp_path)))

    assert str(info.value).startswith("build.context: the context is larger than 1 MB")
    assert "ORCHESTRATOR_MAX_BUILD_CONTEXT_MB" in str(info.value)
    assert engine.called("build_image") == []


def test_a_dockerignore_that_is_no_regular_file_is_refused(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM x")
    (tmp_path / ".dockerignore").symlink_to("/dev/zero")

    with pytest.raises(InvalidRequest, match=r"^build.context: its \.dockerignore must be"):
        context_tar(str(tmp_path))


# -- builds: nothing the engine itself would download ---------------------------------------


@pytest.mark.parametrize(
    ("text", "source"),
    [
        pytest.param("FROM busybox\nADD http://169.254.169.254/x /x\n", "http", id="http"),
        pytest.param('FROM busybox\nADD ["https://h/x", "/x"]\n', "https", id="json_form"),
        pytest.param("FROM busybox\nadd --chown=1 ftp://h/x /x\n", "ftp", id="flags_lowercase"),
        pytest.param("FROM busybox\nADD git@github.com:a/b.git /x\n", "git@", id="git"),
        pytest.param("FROM busybox\nARG U\nADD ${U} /x\n", "${U}", id="variable"),
        pytest.param("FROM busybox\nONBUILD ADD http://h/x /x\n", "http", id="onbuild"),
        pytest.param("FROM busybox\nADD a \\\n  http://h/x /x\n", "http", id="continued"),
        pytest.param("# escape=`\nFROM busybox\nADD a `\n http://h/x /x\n", "http", id="escape"),
    ],
)
def test_an_add_the_engine_would_download_is_refused_without_build_network(
    engine, redis, text, source
):
    with pytest.raises(Forbidden) as info:
        resolve(engine, redis, BUILDS, build=BuildSpec(dockerfile_inline=text))

    message = str(info.value)
    assert message.startswith("build.dockerfile_inline: line ")
    assert source in message
    assert "rule: builds have no network" in message
    assert "ORCHESTRATOR_ALLOW_BUILD_NETWORK=true" in message
    assert engine.called("build_image") == []


def test_a_local_add_and_copy_are_fine_without_network(engine, redis):
    text = "FROM busybox\nADD Dockerfile /a\nCOPY --chown=1 Dockerfile /b\n"

    resolve(engine, redis, BUILDS, build=BuildSpec(dockerfile_inline=text))

    assert len(engine.called("build_image")) == 1


def test_build_network_is_allowed_only_together_with_the_tool_bridge_policy(engine, redis):
    text = "FROM busybox\nADD http://h/x /x\n"
    network_only = BUILDS.model_copy(update={"allow_build_network": True})
    with_bridge = network_only.model_copy(
        update={"allowed_network_modes": ["none", "session", "bridge"]}
    )

    with pytest.raises(Forbidden, match="ORCHESTRATOR_ALLOWED_NETWORK_MODES"):
        resolve(engine, redis, network_only, build=BuildSpec(dockerfile_inline=text))
    resolve(engine, redis, with_bridge, build=BuildSpec(dockerfile_inline=text))

    assert sent_build(engine).network_mode == "default"


def test_a_base_image_whose_onbuild_trigger_downloads_is_refused(engine, redis):
    engine.add_image("trap:1", onbuild=("RUN true", "ADD http://10.0.0.1/x /x"))

    with pytest.raises(Forbidden) as info:
        resolve(engine, redis, BUILDS, build=BuildSpec(dockerfile_inline="FROM trap:1\n"))

    assert "base image 'trap:1' has an ONBUILD ADD of 'http://10.0.0.1/x'" in str(info.value)
    assert engine.called("build_image") == []


def test_a_base_image_is_pulled_first_and_remembered(engine, redis):
    engine.registry["alpine:3.20"] = FakeProgram()
    text = "ARG BASE=busybox\nFROM ${BASE} AS one\nFROM one\nFROM scratch\n"

    resolve(
        engine,
        redis,
        BUILDS,
        build=BuildSpec(dockerfile_inline=text, buildargs={"BASE": "alpine:3.20"}),
    )

    assert engine.called("pull_image") == [("alpine:3.20",)]
    assert tracking.pulled(redis, "h1") == {"alpine:3.20"}


def test_a_base_image_that_cannot_be_pulled_fails_the_build(engine, redis):
    with pytest.raises(ImageBuildFailed, match="^build: base image 'nope:1': "):
        resolve(engine, redis, BUILDS, build=BuildSpec(dockerfile_inline="FROM nope:1\n"))

    assert engine.called("build_image") == []


def test_a_base_image_that_cannot_be_worked_out_is_refused_without_network(engine, redis):
    text = "FROM ${X:?no}\n"

    with pytest.raises(Forbidden, match="cannot be worked out before the build"):
        resolve(engine, redis, BUILDS, build=BuildSpec(dockerfile_inline=text))


# -- COPY --from: an image the engine would pull itself is a base image ------------------------


def test_copy_from_an_image_counts_as_a_base_and_a_stage_or_its_number_does_not():
    text = (
        "FROM busybox AS build\nRUN x\nFROM scratch\nCOPY --from=build /x /x\n"
        "COPY --from=0 /y /y\nCOPY --chown=1 --from=alpine:3 /z /z\nCOPY --from=BUILD /a /a\n"
        "ADD --chown=1 a /a\nCOPY --from=busybox /b /b\n"
    )

    assert dockerfile.base_images(text, {}) == ["busybox", "alpine:3"]


def test_copy_from_a_stage_named_later_is_an_image():
    text = "FROM scratch\nCOPY --from=tools /t /t\nFROM busybox AS tools\n"

    assert dockerfile.base_images(text, {}) == ["tools", "busybox"]


def test_an_image_copied_from_is_pulled_first_remembered_and_its_triggers_checked(engine, redis):
    engine.registry["alpine:3.20"] = FakeProgram()
    text = "FROM busybox\nCOPY --from=alpine:3.20 /etc/os-release /r\n"

    resolve(engine, redis, BUILDS, build=BuildSpec(dockerfile_inline=text))

    assert engine.called("pull_image") == [("alpine:3.20",)]
    assert tracking.pulled(redis, "h1") == {"alpine:3.20"}
    engine.add_image("trap:1", onbuild=("ADD http://10.0.0.1/x /x",))
    trapped = "FROM busybox\nCOPY --from=trap:1 /x /x\n"
    with pytest.raises(Forbidden, match="base image 'trap:1' has an ONBUILD ADD"):
        resolve(engine, redis, BUILDS, build=BuildSpec(dockerfile_inline=trapped))


def test_copy_from_a_variable_is_refused_without_network_naming_the_line(engine, redis):
    text = "FROM busybox\nARG SRC=alpine\nCOPY --from=${SRC} /x /x\n"

    with pytest.raises(Forbidden) as info:
        resolve(engine, redis, BUILDS, build=BuildSpec(dockerfile_inline=text))

    assert "build.dockerfile_inline: line 3: COPY --from=${SRC}" in str(info.value)
    assert "cannot be worked out before the build" in str(info.value)
    assert engine.called("build_image") == engine.called("pull_image") == []


def test_an_image_copied_from_that_cannot_be_pulled_fails_the_build(engine, redis):
    text = "FROM busybox\nCOPY --from=nope:1 /x /x\n"

    with pytest.raises(ImageBuildFailed, match="^build: base image 'nope:1': "):
        resolve(engine, redis, BUILDS, build=BuildSpec(dockerfile_inline=text))

    assert engine.called("build_image") == []


# -- builds: refused before anything, and counted in the host's memory ------------------------


def test_a_build_request_is_refused_up_front_when_builds_are_off():
    with pytest.raises(Forbidden, match="ORCHESTRATOR_ALLOW_BUILDS=true"):
        check_build_request(INLINE, SETTINGS)
    check_build_request(None, SETTINGS)  # no build: nothing to refuse
    check_build_request(INLINE, BUILDS)


def test_an_inline_add_of_a_url_is_refused_up_front_without_build_network():
    build = BuildSpec(dockerfile_inline="FROM busybox\nADD http://169.254.169.254/x /x\n")

    with pytest.raises(Forbidden, match="^build.dockerfile_inline: line 2: "):
        check_build_request(build, BUILDS)


def test_a_build_holds_its_memory_on_the_host_while_it_runs_and_gives_it_back(
    engine, redis, monkeypatch
):
    settings = BUILDS.model_copy(update={"host_max_memory_mb": 3000, "build_memory_mb": 1024})
    quotas = Quotas(redis, settings)
    build = engine.build_image
    during: list[dict[str, int]] = []

    def observed(spec: EngineBuild) -> Image:
        during.append(quotas.host_usage())
        return build(spec)

    monkeypatch.setattr(engine, "build_image", observed)

    resolve(engine, redis, settings, build=INLINE)

    assert during == [{"containers": 0, "relics": 0, "memory_mb": 1024}]
    assert quotas.host_usage() == {"containers": 0, "relics": 0, "memory_mb": 0}


def test_a_build_with_no_room_in_the_hosts_memory_is_refused_naming_both_settings(engine, redis):
    settings = BUILDS.model_copy(update={"host_max_memory_mb": 1500, "build_memory_mb": 1024})
    quotas = Quotas(redis, settings)
    quotas.acquire(
        "run-1", session_id="s1", kind="tool", memory_mb=512, expires_at=time.time() + 60
    )

    with pytest.raises(QuotaExceeded) as info:
        resolve(engine, redis, settings, build=INLINE)

    message = str(info.value)
    assert message.startswith("build: ")
    assert "would commit 1536 MB on host 'h1', above its quota 1500 MB" in message
    assert "ORCHESTRATOR_BUILD_MEMORY_MB" in message
    assert "ORCHESTRATOR_HOST_MAX_MEMORY_MB" in message
    assert engine.called("build_image") == []
    assert quotas.host_usage()["memory_mb"] == 512  # the refused build holds nothing


def test_a_failed_build_gives_its_memory_back(engine, redis):
    settings = BUILDS.model_copy(update={"host_max_memory_mb": 3000})
    engine.fail_next("build_image", ImageBuildFailed("build image x: RUN false: exit 1"))

    with pytest.raises(ImageBuildFailed):
        resolve(engine, redis, settings, build=INLINE)

    assert Quotas(redis, settings).host_usage()["memory_mb"] == 0


def replace_build(spec: BuildSpec, **changes: Any) -> BuildSpec:
    return BuildSpec(**{**spec.model_dump(), **changes})


# -- build contexts ------------------------------------------------------------------------


def make_tree(root: Any, files: dict[str, str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def sent_files(root: Any, dockerfile: str = "Dockerfile") -> set[str]:
    """The regular files a build of ``root`` is sent."""
    return {n for n, m in names(context_tar(str(root), dockerfile)).items() if m.isfile()}


def test_without_a_dockerignore_every_file_is_sent(tmp_path):
    make_tree(tmp_path, {"Dockerfile": "FROM x", "a.txt": "a", "src/b.py": "b", "src/c/d": "d"})

    assert sent_files(tmp_path) == {"Dockerfile", "a.txt", "src/b.py", "src/c/d"}


@pytest.mark.parametrize(
    ("ignore", "sent"),
    [
        pytest.param("*.log", {"keep.txt", "src/app.py", "src/debug.log"}, id="star_top_only"),
        pytest.param("**/*.log", {"keep.txt", "src/app.py"}, id="double_star_any_depth"),
        pytest.param("src", {"keep.txt", "top.log"}, id="a_directory_and_all_in_it"),
        pytest.param("/src/", {"keep.txt", "top.log"}, id="leading_and_trailing_slash"),
        pytest.param("src\n!src/app.py", {"keep.txt", "top.log", "src/app.py"}, id="reinclude"),
        pytest.param("*\n!keep.txt", {"keep.txt"}, id="everything_but_one"),
        pytest.param("# a comment\n\nkeep.tx?", {"top.log", "src/app.py", "src/debug.log"}, id="?"),
        pytest.param("[kt]*", {"src/app.py", "src/debug.log"}, id="character_class"),
        pytest.param("src/*.py", {"keep.txt", "top.log", "src/debug.log"}, id="in_a_directory"),
    ],
)
def test_dockerignore_patterns_leave_files_out_as_docker_build_does(tmp_path, ignore, sent):
    files = {"keep.txt": "k", "top.log": "t", "src/app.py": "a", "src/debug.log": "d"}
    make_tree(tmp_path, {**files, "Dockerfile": "FROM x", ".dockerignore": ignore})

    kept = sent_files(tmp_path) - {"Dockerfile", ".dockerignore"}

    assert kept == sent


def test_the_dockerfile_is_sent_even_when_the_dockerignore_leaves_it_out(tmp_path):
    make_tree(tmp_path, {"build/Dockerfile": "FROM x", "a": "a", ".dockerignore": "build\na"})

    assert sent_files(tmp_path, "build/Dockerfile") == {".dockerignore", "build/Dockerfile"}


def test_symlinks_are_sent_as_links_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    context = tmp_path / "ctx"
    make_tree(context, {"Dockerfile": "FROM x"})
    (context / "link").symlink_to(outside)

    members = names(context_tar(str(context)))

    assert members["link"].issym()
    assert members["link"].linkname == str(outside)
    assert not any(name.startswith("link/") for name in members)


# -- the Dockerfile, read as the builder reads it -------------------------------------------


def test_instructions_join_continuations_and_skip_comments_inside_them():
    text = "# syntax=x\nFROM a\nRUN one \\\n# a comment\n\n  two\nrun\tthree\n"

    found = dockerfile.instructions(text)

    assert [(i.line, i.keyword, i.arguments) for i in found] == [
        (2, "FROM", "a"),
        (3, "RUN", "one   two"),
        (7, "RUN", "three"),
    ]


def test_the_escape_directive_changes_the_continuation_character():
    text = "# escape=`\nFROM a\nRUN c:\\dir `\n  next\n"

    assert [i.arguments for i in dockerfile.instructions(text)] == ["a", "c:\\dir   next"]


def test_base_images_substitute_global_args_and_skip_stages_and_scratch():
    text = (
        "ARG REG=docker.io\nARG TAG\nFROM --platform=linux/amd64 $REG/a:${TAG:-1} AS build\n"
        "FROM build\nFROM scratch\nFROM b:2\nFROM ${REG}/a:1\n"
    )

    assert dockerfile.base_images(text, {}) == ["docker.io/a:1", "b:2"]
    assert dockerfile.base_images(text, {"TAG": "7", "REG": "r"}) == ["r/a:7", "b:2", "r/a:1"]


def test_a_stage_named_as_its_own_image_is_still_a_base():
    assert dockerfile.base_images("FROM app AS app\nFROM app\n", {}) == ["app"]


def test_trigger_sources_read_a_base_images_onbuild_lines():
    triggers = ["RUN x", "ADD http://h/a /a", "ADD local /b", "COPY http://h/c /c"]

    assert dockerfile.trigger_sources(triggers) == ["http://h/a"]


# -- the engine's build query ---------------------------------------------------------------


def test_build_params_carry_every_limit_and_drop_unset_ones():
    spec = EngineBuild(
        context_tar=b"",
        tag="orchestrator-build/t:1",
        build_args={"A": "1"},
        labels={"orchestrator.kind": "image"},
        memory_mb=64,
        cpu_limit=0.5,
        cgroup_parent="/orch",
    )

    assert build_params(spec) == {
        "t": "orchestrator-build/t:1",
        "dockerfile": "Dockerfile",
        "networkmode": "none",
        "rm": "1",
        "forcerm": "1",
        "buildargs": '{"A": "1"}',
        "labels": '{"orchestrator.kind": "image"}',
        "cgroupparent": "/orch",
        "memory": 64 * MIB,
        "memswap": 64 * MIB,
        "cpuperiod": 100_000,
        "cpuquota": 50_000,
    }
    assert build_params(EngineBuild(context_tar=b"", tag="x:1", pull=True))["pull"] == "1"


# -- reaping: only what the orchestrator brought, within the budget -------------------------

NOW = 1_900_000_000.0


def reaping(**changes: Any) -> Settings:
    return BUILDS.model_copy(update={"image_grace_seconds": 60, **changes})


def built(engine: FakeEngine, redis: Any, name: str, size_mb: int, used_at: float) -> str:
    """An image a build of host h1 made, used last at ``used_at``."""
    tag = f"orchestrator-build/{name}:1"
    labels = {
        "orchestrator.managed": "true",
        "orchestrator.kind": "image",
        "orchestrator.host": "h1",
        "orchestrator.built-at": str(int(used_at)),
    }
    engine.add_image(tag, labels=labels, size_bytes=size_mb * MIB)
    tracking.record_use(redis, "h1", tag, used_at)
    return tag


def pulled(engine: FakeEngine, redis: Any, ref: str, size_mb: int, used_at: float) -> str:
    engine.add_image(ref, size_bytes=size_mb * MIB)
    tracking.record_pull(redis, "h1", ref, used_at)
    return ref


def present(engine: FakeEngine, ref: str) -> bool:
    try:
        engine.inspect_image(ref)
        return True
    except ImageNotFound:
        return False


def test_nothing_is_removed_within_the_budget_and_no_container_is_listed(engine, redis):
    built(engine, redis, "a", 5, NOW - 3600)

    report = reap_images(engine, redis, reaping(image_disk_budget_mb=10), NOW)

    assert report == {"removed": [], "errors": []}
    assert engine.called("list_containers") == []


def test_over_the_budget_the_least_recently_used_go_first(engine, redis):
    oldest = built(engine, redis, "oldest", 4, NOW - 3000)
    old_pull = pulled(engine, redis, "alpine:3.20", 4, NOW - 2000)
    recent = built(engine, redis, "recent", 4, NOW - 1000)

    report = reap_images(engine, redis, reaping(image_disk_budget_mb=5), NOW)

    assert [r["image"] for r in report["removed"]] == [oldest, old_pull]
    assert "ORCHESTRATOR_IMAGE_DISK_BUDGET_MB" in report["removed"][0]["reason"]
    assert not present(engine, oldest) and not present(engine, old_pull)
    assert present(engine, recent)
    assert tracking.pulled(redis, "h1") == set()
    assert oldest not in tracking.last_used(redis, "h1")


def test_images_the_orchestrator_did_not_bring_are_never_removed(engine, redis):
    engine.add_image("operator/app:1", size_bytes=50 * MIB)
    engine.add_image("victim/app:1", labels={"orchestrator.managed": "true"}, size_bytes=MIB)
    other_host = built(engine, redis, "other", 5, NOW - 9000)
    engine.images[other_host] = replace(
        engine.images[other_host],
        labels={**engine.images[other_host].labels, "orchestrator.host": "h2"},
    )
    tracking.record_use(redis, "h1", "busybox:latest", NOW - 9000)  # used, never pulled

    report = reap_images(engine, redis, reaping(image_disk_budget_mb=0), NOW)

    assert report["removed"] == []
    for ref in ("operator/app:1", "victim/app:1", other_host, "busybox:latest"):
        assert present(engine, ref)


def test_an_image_a_container_uses_or_used_lately_stays(engine, redis):
    in_use = built(engine, redis, "in-use", 5, NOW - 9000)
    fresh = built(engine, redis, "fresh", 5, NOW - 10)
    spec = ContainerSpec(name="c1", image=in_use, labels={"orchestrator.kind": "tool"})
    engine.create_container(spec)

    report = reap_images(engine, redis, reaping(image_disk_budget_mb=0), NOW)

    assert report["removed"] == []
    assert present(engine, in_use) and present(engine, fresh)


def test_built_images_past_their_age_go_even_within_the_budget(engine, redis):
    old = built(engine, redis, "old", 1, NOW - 8 * 86400)
    young = built(engine, redis, "young", 1, NOW - 86400)

    report = reap_images(engine, redis, reaping(), NOW)

    assert [r["image"] for r in report["removed"]] == [old]
    assert "ORCHESTRATOR_BUILT_IMAGE_MAX_AGE_SECONDS" in report["removed"][0]["reason"]
    assert present(engine, young)


def test_a_pulled_reference_of_an_image_with_other_tags_only_loses_its_tag(engine, redis):
    ref = pulled(engine, redis, "alpine:3.20", 5, NOW - 9000)
    engine.tag_image(ref, "operator/alpine:mine")

    report = reap_images(engine, redis, reaping(image_disk_budget_mb=0), NOW)

    assert [r["image"] for r in report["removed"]] == [ref]
    assert not present(engine, ref)
    assert present(engine, "operator/alpine:mine")


def test_a_pulled_image_gone_from_the_host_is_forgotten(engine, redis):
    tracking.record_pull(redis, "h1", "gone:1", NOW - 10)

    reap_images(engine, redis, reaping(), NOW)

    assert tracking.pulled(redis, "h1") == set()


def test_a_janitor_pass_reaps_images_and_reports_them(engine, redis):
    rt = Runtime(reaping(image_disk_budget_mb=0, image_grace_seconds=0), redis, engine=engine)
    old = built(engine, redis, "old", 1, time.time() - 3600)

    report = janitor.reap_host(rt)

    assert [r["image"] for r in report["images_removed"]] == [old]
    assert not present(engine, old)
    assert present(engine, "busybox:latest")


def test_a_janitor_pass_reports_an_image_step_that_failed_and_goes_on(engine, redis):
    rt = Runtime(reaping(), redis, engine=engine)
    engine.fail_next("list_images", DockerUnavailable("list images: engine unreachable"))

    report = janitor.reap_host(rt)

    assert report["images_removed"] == []
    assert report["errors"] == ["h1: images: list images: engine unreachable"]


# -- the images a worker saw lately ---------------------------------------------------------


def test_a_sighting_counts_for_its_time_then_is_dropped():
    now = [100.0]
    recent = RecentImages(ttl_seconds=60, clock=lambda: now[0])

    assert recent.recent("busybox:1") is False
    recent.saw("busybox:1")
    now[0] = 159.9
    assert recent.recent("busybox:1") is True
    assert recent.recent("busybox:2") is False  # each reference on its own
    now[0] = 160.0
    assert recent.recent("busybox:1") is False
    assert recent._seen == {}  # a stale sighting does not stay behind


def test_a_forgotten_image_is_checked_again_until_seen_again():
    recent = RecentImages()
    recent.saw("busybox:1")

    recent.forget("busybox:1")
    recent.forget("never-seen:1")  # nothing to forget: no error

    assert recent.recent("busybox:1") is False
    recent.saw("busybox:1")
    assert recent.recent("busybox:1") is True
