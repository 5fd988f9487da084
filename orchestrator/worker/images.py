"""Images: use what the host has, else pull once per host, or build from a Dockerfile.

Pulls of one image and builds of one tag are serialized per host with a Redis
lock, so concurrent tasks (in one worker or several on the same host) pull or
build once and the others find the result.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tarfile
from collections.abc import Callable
from typing import Any

from orchestrator.core import types
from orchestrator.core.specs import path_within
from orchestrator.engine.base import Engine
from orchestrator.errors import (
    DockerUnavailable,
    ImageNotFound,
    InvalidRequest,
    OrchestratorError,
)
from orchestrator.models import BuildSpec
from orchestrator.settings import Settings
from orchestrator.state import keys

__all__ = ["ensure_image", "build_image", "build_tag", "resolve_image", "context_tar"]

log = logging.getLogger(__name__)
LOCK_SECONDS = 1800
#: The network a build's ``RUN`` steps get: the engine's default, as ``docker build``'s.
BUILD_NETWORK = "default"


def _has_image(engine: Engine, image: str) -> bool:
    try:
        engine.inspect_image(image)
        return True
    except ImageNotFound:
        return False


def ensure_image(
    engine: Engine,
    redis: Any,
    settings: Settings,
    image: str,
    on_pull: Callable[[], None] = lambda: None,
) -> str:
    """Return ``image`` once it is on this host, pulling it (once per host) if missing.

    Args:
        engine: this host's engine.
        redis: a redis-py client (the per-host pull lock).
        settings: the worker's settings.
        image: the image reference.
        on_pull: called when a pull is actually needed (for progress reporting).

    Returns:
        ``image``.

    Raises:
        ImageNotFound: it is not local and the pull failed.
        DockerUnavailable: the engine does not answer.
    """
    if _has_image(engine, image):
        return image
    on_pull()
    lock = redis.lock(keys.lock(f"pull:{settings.host_name}:{image}"), timeout=LOCK_SECONDS)
    with lock:
        if _has_image(engine, image):
            return image
        log.info("pulling %s", image)
        try:
            engine.pull_image(image)
        except DockerUnavailable:
            raise
        except OrchestratorError as exc:
            raise ImageNotFound(
                f"image: {image!r} is not on host {settings.host_name} and could not be pulled: "
                f"{exc}"
            ) from exc
    return image


def build_tag(spec: BuildSpec, label: str) -> str:
    """The tag a build gets: the requested one, or one derived from the Dockerfile text."""
    if spec.tag:
        return spec.tag
    digest = hashlib.sha256(
        (spec.dockerfile_inline or f"{spec.context}:{spec.dockerfile}").encode()
    ).hexdigest()[:16]
    return f"orchestrator-build/{label.lower()}:{digest}"


def _inline_context(dockerfile_text: str) -> bytes:
    data = dockerfile_text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _check_context(spec: BuildSpec, settings: Settings) -> str:
    real = os.path.realpath(spec.context or "")
    roots = [os.path.realpath(r) for r in settings.allowed_build_roots]
    if not any(path_within(real, root) for root in roots):
        raise InvalidRequest(
            f"build.context: {spec.context!r} is outside the allowed build roots "
            "(ORCHESTRATOR_ALLOWED_BUILD_ROOTS)"
        )
    if not os.path.isdir(real):
        raise InvalidRequest(f"build.context: {spec.context!r} is not a directory on the worker")
    return real


def build_image(
    engine: Engine,
    redis: Any,
    settings: Settings,
    spec: BuildSpec,
    label: str,
    on_build: Callable[[], None] = lambda: None,
) -> str:
    """Build ``spec`` and tag it; builds of one tag are serialized per host.

    Inline Dockerfiles whose derived tag already exists are not rebuilt.

    Args:
        engine: this host's engine.
        redis: a redis-py client (the per-host build lock).
        settings: the worker's settings (the allowed build roots).
        spec: the request's build.
        label: names the derived tag (the tool or relic name).
        on_build: called when a build actually starts (for progress reporting).

    Returns:
        The tag built.

    Raises:
        InvalidRequest: the context is not an allowed directory.
        ImageBuildFailed: the build failed; the message has the builder's error.
    """
    tag = build_tag(spec, label)
    context = _check_context(spec, settings) if spec.context else None
    lock = redis.lock(keys.lock(f"build:{settings.host_name}:{tag}"), timeout=LOCK_SECONDS)
    with lock:
        if spec.dockerfile_inline and not spec.tag and _has_image(engine, tag):
            return tag
        on_build()
        if context:
            build = types.BuildSpec(
                context_tar=context_tar(context, spec.dockerfile),
                tag=tag,
                dockerfile=spec.dockerfile,
                build_args=spec.buildargs,
                network_mode=BUILD_NETWORK,
            )
        else:
            build = types.BuildSpec(
                context_tar=_inline_context(spec.dockerfile_inline or ""),
                tag=tag,
                build_args=spec.buildargs,
                network_mode=BUILD_NETWORK,
            )
        log.info("building %s", tag)
        engine.build_image(build)
    return tag


def resolve_image(
    engine: Engine,
    redis: Any,
    settings: Settings,
    image: str | None,
    build: BuildSpec | None,
    label: str,
    progress: Callable[[str], None] = lambda state: None,
) -> str:
    """The image to run: built from ``build`` or ensured from ``image``.

    Args:
        engine: this host's engine.
        redis: a redis-py client (the per-host pull and build locks).
        settings: the worker's settings.
        image: the image reference, when there is no build.
        build: the request's build, if any.
        label: names a derived build tag (the tool or relic name).
        progress: ``progress("BUILDING")`` / ``progress("PULLING")`` is called only when
            that work happens.

    Returns:
        The image reference to create the container from.

    Raises:
        InvalidRequest: a build context is not an allowed directory.
        ImageNotFound / ImageBuildFailed: there is no such image, or the build failed.
    """
    if build is not None:
        return build_image(engine, redis, settings, build, label, lambda: progress("BUILDING"))
    assert image is not None
    return ensure_image(engine, redis, settings, image, lambda: progress("PULLING"))


# -- build contexts: a directory as a tar, as ``docker build`` sends it --------------------


def context_tar(directory: str, dockerfile: str = "Dockerfile") -> bytes:
    """A build context: the files of ``directory`` that its ``.dockerignore`` leaves in.

    As the docker CLI (and docker-py) do: each ``.dockerignore`` line is a pattern
    relative to the context (``*``, ``?``, ``[...]``, ``**`` for any number of
    directories; ``!`` re-includes); the last matching line wins; a pattern excluding a
    directory excludes what is in it; the Dockerfile is always sent. Symlinks are sent
    as symlinks, never followed; sockets are left out.

    Args:
        directory: the context directory (already checked against the build roots).
        dockerfile: the Dockerfile's path in the context.

    Returns:
        An uncompressed tar archive.
    """
    context = _Context(directory, os.path.normpath(dockerfile))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for relative in context.files():
            _add(archive, os.path.join(directory, relative), relative)
    return buffer.getvalue()


class _Context:
    """A context directory and its ``.dockerignore``: which paths a build is sent."""

    def __init__(self, directory: str, dockerfile: str) -> None:
        self.directory = directory
        self.dockerfile = dockerfile
        #: (re-include?, regex) per ``.dockerignore`` line, in file order
        self.patterns = [
            (line.startswith("!"), _pattern_regex(_clean(line.removeprefix("!"))))
            for line in _ignore_lines(directory)
        ]
        self._may_reinclude = any(include for include, _ in self.patterns)

    def ignored(self, relative: str) -> bool:
        """True when the last pattern matching the path, or one of its parents, excludes it."""
        if relative == self.dockerfile:
            return False
        parts = relative.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        ignored = False
        for include, regex in self.patterns:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                ignored = not include
        return ignored

    def _prune(self, relative: str) -> bool:
        """True when nothing under an ignored directory can be sent: skip walking it."""
        return not self._may_reinclude and not self.dockerfile.startswith(relative + "/")

    def files(self) -> list[str]:
        """The paths (relative, in walk order) that are sent, directories included."""
        kept = []
        for root, dirs, files in os.walk(self.directory):
            base = os.path.relpath(root, self.directory)
            walked = []
            for name in sorted(dirs):
                relative = name if base == "." else f"{base}/{name}"
                if not self.ignored(relative):
                    kept.append(relative)
                    walked.append(name)
                elif not self._prune(relative):
                    walked.append(name)
            dirs[:] = walked
            for name in sorted(files):
                relative = name if base == "." else f"{base}/{name}"
                if not self.ignored(relative):
                    kept.append(relative)
        return kept


def _ignore_lines(directory: str) -> list[str]:
    """The patterns of ``.dockerignore`` (none when there is no such file)."""
    try:
        with open(os.path.join(directory, ".dockerignore"), encoding="utf-8") as handle:
            lines = [line.strip() for line in handle.read().splitlines()]
    except FileNotFoundError:
        return []
    return [line for line in lines if line and not line.startswith("#")]


def _clean(pattern: str) -> str:
    """A pattern as the engine compares it: normalised, relative to the context."""
    return os.path.normpath(pattern.strip()).lstrip("/") or "."


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A ``.dockerignore`` pattern as a regex over slash-separated relative paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1  # "**/" is "**": any number of directories, even none
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        ch = pattern[i]
        end = pattern.find("]", i + 1) if ch == "[" else -1
        if end > 0:  # a character class, as the engine's matcher reads it
            out, i = out + pattern[i : end + 1], end + 1
        elif ch == "\\" and i + 1 < len(pattern):
            out, i = out + re.escape(pattern[i + 1]), i + 2
        else:
            out, i = out + {"*": "[^/]*", "?": "[^/]"}.get(ch, re.escape(ch)), i + 1
    return re.compile(out)


def _add(archive: tarfile.TarFile, path: str, arcname: str) -> None:
    info = archive.gettarinfo(path, arcname=arcname)
    if info is None:  # a socket: nothing a build can use
        return
    info.mtime = int(info.mtime)
    if info.isfile():
        with open(path, "rb") as handle:
            archive.addfile(info, handle)
    else:  # directories, symlinks, FIFOs: no content to read
        archive.addfile(info)
