"""Behaviour of :mod:`orchestrator.worker.images` on the in-memory engine: local images are
used as they are, missing ones pulled once per host, builds tagged and sent their context
(``.dockerignore`` applied) under a per-host lock."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from typing import Any

import pytest

from orchestrator.core.types import BuildSpec as EngineBuild
from orchestrator.core.types import Image
from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import DockerUnavailable, ImageBuildFailed, ImageNotFound, InvalidRequest
from orchestrator.models import BuildSpec
from orchestrator.settings import Settings
from orchestrator.worker.images import build_tag, context_tar, ensure_image, resolve_image

SETTINGS = Settings.from_env({}, host_name="h1")


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


# -- builds --------------------------------------------------------------------------------


def test_an_inline_dockerfile_is_built_alone_in_its_context(engine, redis):
    build = BuildSpec(dockerfile_inline="FROM busybox\n", tag="me/tool:1", buildargs={"V": "2"})
    states: list[str] = []

    assert resolve(engine, redis, build=build, states=states) == "me/tool:1"

    sent = sent_build(engine)
    assert sent.tag == "me/tool:1"
    assert sent.dockerfile == "Dockerfile"
    assert sent.build_args == {"V": "2"}
    assert sent.network_mode == "default"  # RUN steps get the engine's default network
    assert list(names(sent.context_tar)) == ["Dockerfile"]
    assert read(sent.context_tar, "Dockerfile") == b"FROM busybox\n"
    assert states == ["BUILDING"]


def test_an_inline_build_without_a_tag_gets_one_derived_from_its_text_and_is_built_once(
    engine, redis
):
    build = BuildSpec(dockerfile_inline="FROM busybox\nRUN true\n")

    first = resolve(engine, redis, build=build, label="Grep")
    states: list[str] = []
    again = resolve(engine, redis, build=build, label="Grep", states=states)

    assert first == again == build_tag(build, "Grep")
    assert first.startswith("orchestrator-build/grep:")
    assert len(engine.called("build_image")) == 1
    assert states == []  # found, not built


def test_an_explicit_tag_is_rebuilt_every_time(engine, redis):
    build = BuildSpec(dockerfile_inline="FROM busybox\n", tag="me/tool:1")

    resolve(engine, redis, build=build)
    resolve(engine, redis, build=build)

    assert len(engine.called("build_image")) == 2


def test_a_failed_build_is_reported_as_such(engine, redis):
    engine.fail_next("build_image", ImageBuildFailed("build image me/tool:1: RUN false: exit 1"))

    with pytest.raises(ImageBuildFailed, match="exit 1"):
        resolve(engine, redis, build=BuildSpec(dockerfile_inline="FROM x\n", tag="me/tool:1"))


def test_a_context_directory_is_sent_with_its_dockerfile_path(engine, redis, tmp_path):
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile.dev").write_text("FROM busybox\nCOPY app.py /\n")
    (tmp_path / "app.py").write_text("print(1)\n")
    settings = Settings.from_env({}, host_name="h1", allowed_build_roots=[str(tmp_path)])
    build = BuildSpec(context=str(tmp_path), dockerfile="docker/Dockerfile.dev", tag="me/a:1")

    resolve(engine, redis, settings, build=build)

    sent = sent_build(engine)
    assert sent.dockerfile == "docker/Dockerfile.dev"
    assert set(names(sent.context_tar)) == {"app.py", "docker", "docker/Dockerfile.dev"}
    assert read(sent.context_tar, "app.py") == b"print(1)\n"


def test_a_context_outside_the_allowed_build_roots_is_refused(engine, redis, tmp_path):
    settings = Settings.from_env({}, host_name="h1", allowed_build_roots=[str(tmp_path / "ok")])

    with pytest.raises(InvalidRequest, match="outside the allowed build roots"):
        resolve(engine, redis, settings, build=BuildSpec(context=str(tmp_path)))

    assert engine.called("build_image") == []


def test_a_context_that_is_not_a_directory_is_refused(engine, redis, tmp_path):
    settings = Settings.from_env({}, host_name="h1", allowed_build_roots=[str(tmp_path)])

    with pytest.raises(InvalidRequest, match="is not a directory on the worker"):
        resolve(engine, redis, settings, build=BuildSpec(context=str(tmp_path / "missing")))


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
