"""Images: use what the host has, else pull once per host, or build from a Dockerfile.

Pulls of one image and builds of one input are serialized per host with a Redis lock,
so concurrent tasks (in one worker or several on the same host) pull or build once and
the others find the result.

Builds are the request's code running on the host's engine, so the server's policy
decides all of it (every refusal names the field, the rule and the setting):

- builds are off unless the operator allows them (``ORCHESTRATOR_ALLOW_BUILDS``);
- the image is tagged only in the orchestrator's namespace,
  ``orchestrator-build/<name>:<hash of the whole build input>`` (context bytes,
  Dockerfile path, build arguments, requested tag): a request can never move a tag
  that runs elsewhere; its ``tag`` is only the ``orchestrator.requested-tag`` label;
- the Dockerfile must be a regular file inside the context, reached without symlinks;
  the context is bounded in size, the image built too (a larger one is removed);
- ``RUN`` steps get no network (unless the operator allows it), a memory and CPU limit,
  an optional cgroup parent, and the whole build a wall-clock limit; what the engine
  itself would download (``ADD <url>``, also in ``ONBUILD`` triggers of base images) is
  refused while builds have no network, base images are pulled first (and tracked);
- built images carry the orchestrator's labels; the janitor removes unused built and
  pulled images past a per-host disk budget (least recently used first) and built
  images past a maximum age (:func:`reap_images`); nothing the orchestrator did not
  build or pull is ever removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import stat
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.core import dockerfile as dockerfile_rules
from orchestrator.core import types
from orchestrator.core.specs import path_within
from orchestrator.engine.base import Engine
from orchestrator.errors import (
    DockerError,
    DockerUnavailable,
    Forbidden,
    ImageBuildFailed,
    ImageNotFound,
    InvalidRequest,
    LimitExceeded,
    OrchestratorError,
)
from orchestrator.models import BuildSpec
from orchestrator.protocol import Kind, label, label_filter
from orchestrator.settings import Settings
from orchestrator.state import images as tracking
from orchestrator.state import keys
from orchestrator.state.quotas import Quotas

__all__ = [
    "BUILD_NAMESPACE",
    "RecentImages",
    "ensure_image",
    "build_image",
    "build_tag",
    "check_builds_allowed",
    "check_build_request",
    "build_network_allowed",
    "check_dockerfile",
    "resolve_image",
    "context_tar",
    "reap_images",
]

log = logging.getLogger(__name__)
LOCK_SECONDS = 1800
MIB = 1024 * 1024
#: Every image a build makes is tagged under this repository prefix, and only there.
BUILD_NAMESPACE = "orchestrator-build"
#: A build's entry in its host's memory quota outlives its time limit by this much.
BUILD_QUOTA_MARGIN_SECONDS = 120
#: How long a worker trusts that an image it created a container from is still there.
RECENT_IMAGE_SECONDS = 60.0
#: Version of the build key: bump it when what goes into :func:`build_tag` changes.
_KEY_VERSION = 1
#: The largest ``.dockerignore`` read (the file is the request's).
_IGNORE_FILE_BYTES = 1024 * 1024


class RecentImages:
    """The image references a worker saw on its host lately (a create from one worked).

    A run of one of them creates its container without asking the engine for the image
    first, a round trip saved. Seen is not a promise: a create that finds the image gone
    (removed meanwhile) forgets it and takes the usual path, which pulls it.

    Args:
        ttl_seconds: how long a sighting counts.
        clock: monotonic seconds (a fake one in tests).
    """

    def __init__(
        self, ttl_seconds: float = RECENT_IMAGE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def saw(self, ref: str) -> None:
        """``ref`` is on the host now."""
        with self._lock:
            self._seen[ref] = self._clock()

    def recent(self, ref: str) -> bool:
        """True if ``ref`` was seen within the last ``ttl_seconds``."""
        with self._lock:
            seen = self._seen.get(ref)
            if seen is None:
                return False
            if self._clock() - seen < self.ttl_seconds:
                return True
            del self._seen[ref]  # stale: the map holds only what counts
            return False

    def forget(self, ref: str) -> None:
        """``ref`` turned out not to be on the host."""
        with self._lock:
            self._seen.pop(ref, None)


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

    A pull is remembered (per host, in Redis) so the janitor may remove the image once
    unused; every use is timed, for its least-recently-used order.

    Args:
        engine: this host's engine.
        redis: a redis-py client (the per-host pull lock, pull and use records).
        settings: the worker's settings.
        image: the image reference.
        on_pull: called when a pull is actually needed (for progress reporting).

    Returns:
        ``image``.

    Raises:
        ImageNotFound: it is not local and the pull failed.
        DockerUnavailable: the engine does not answer.
    """
    host = settings.host_name
    if _has_image(engine, image):
        tracking.record_use(redis, host, image, time.time())
        return image
    on_pull()
    lock = redis.lock(keys.lock(f"pull:{host}:{image}"), timeout=LOCK_SECONDS)
    with lock:
        if _has_image(engine, image):
            tracking.record_use(redis, host, image, time.time())
            return image
        log.info("pulling %s", image)
        try:
            engine.pull_image(image)
        except DockerUnavailable:
            raise
        except OrchestratorError as exc:
            raise ImageNotFound(
                f"image: {image!r} is not on host {host} and could not be pulled: {exc}"
            ) from exc
        tracking.record_pull(redis, host, image, time.time())
    return image


# -- build policy --------------------------------------------------------------------------


def check_builds_allowed(settings: Settings) -> None:
    """Refuse any build unless the operator allows builds.

    Raises:
        Forbidden: naming ``build``, the rule and ``ORCHESTRATOR_ALLOW_BUILDS``.
    """
    if not settings.allow_builds:
        raise Forbidden(
            "build: building images is off on this server (rule: a build runs the request's "
            "Dockerfile on the host's engine, so builds are refused unless the operator "
            "allows them); set ORCHESTRATOR_ALLOW_BUILDS=true to allow builds, or give an "
            "image instead"
        )


def check_build_request(build: BuildSpec | None, settings: Settings) -> None:
    """The build checks a request can fail before anything is created or counted: builds
    allowed at all, and (an inline Dockerfile being known already) nothing the engine would
    download while builds have no network. A context directory is checked when it is read.

    Raises:
        Forbidden: naming the field, the rule and the setting.
    """
    if build is None:
        return
    check_builds_allowed(settings)
    if build.dockerfile_inline is not None:
        check_dockerfile(
            build.dockerfile_inline, build_network_allowed(settings), "build.dockerfile_inline"
        )


def build_network_allowed(settings: Settings) -> bool:
    """True when builds may use the network: allowed for builds, and no more than a tool
    may have (the default bridge must be an allowed network mode)."""
    return settings.allow_build_network and "bridge" in settings.allowed_network_modes


_NETWORK_SETTINGS = (
    "set ORCHESTRATOR_ALLOW_BUILD_NETWORK=true (with bridge in "
    "ORCHESTRATOR_ALLOWED_NETWORK_MODES) to allow it"
)


def check_dockerfile(text: str, network: bool, field: str = "build.dockerfile") -> None:
    """Refuse what the engine itself would download while builds have no network.

    The engine fetches ``ADD <url>`` sources from the host's own network namespace,
    whatever network the ``RUN`` steps get; a source holding a variable may become a URL
    through a build argument.

    Args:
        text: the Dockerfile.
        network: builds may use the network (then nothing is refused).
        field: the request field the text came from (``build.dockerfile_inline`` too).

    Raises:
        Forbidden: naming ``field``, the line, the rule and the settings.
    """
    if network:
        return
    for line, source in dockerfile_rules.fetched_sources(text):
        what = (
            "holds a variable, which a build argument could make a URL"
            if ("$" in source)
            else "is a remote address"
        )
        raise Forbidden(
            f"{field}: line {line}: the ADD source {source!r} {what}: the Docker "
            "engine would download it itself, from the host's network, outside the build's "
            f"sandbox (rule: builds have no network); {_NETWORK_SETTINGS}, or COPY the file "
            "from the build context"
        )


def _check_context(spec: BuildSpec, settings: Settings) -> str:
    real = os.path.realpath(spec.context or "")
    roots = [os.path.realpath(r) for r in settings.allowed_build_roots]
    if not any(path_within(real, root) for root in roots):
        raise Forbidden(
            f"build.context: {spec.context!r} is outside the allowed build roots (rule: a "
            "build reads only directories the operator allows); add a root to "
            "ORCHESTRATOR_ALLOWED_BUILD_ROOTS"
        )
    if not os.path.isdir(real):
        raise InvalidRequest(f"build.context: {spec.context!r} is not a directory on the worker")
    return real


def _check_dockerfile_path(context: str, name: str) -> str:
    """The Dockerfile's path in the context, once it is a regular file reached without
    symlinks (the model already refused absolute paths and ``..``).

    Raises:
        Forbidden: it resolves outside the context, or through a symbolic link.
        InvalidRequest: there is no such regular file.
    """
    joined = os.path.normpath(os.path.join(context, name))
    real = os.path.realpath(joined)
    if real != joined or not path_within(real, context):
        raise Forbidden(
            f"build.dockerfile: {name!r} resolves through a symbolic link (rule: the "
            "Dockerfile must be a regular file inside the build context, reached without "
            "symbolic links); no setting allows it"
        )
    try:
        mode = os.lstat(real).st_mode
    except FileNotFoundError:
        raise InvalidRequest(f"build.dockerfile: {name!r} is not in the build context") from None
    if not stat.S_ISREG(mode):
        raise Forbidden(
            f"build.dockerfile: {name!r} is not a regular file (rule: the Dockerfile must be "
            "a regular file inside the build context); no setting allows it"
        )
    return os.path.relpath(real, context)


# -- building ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    """What a build sends: the context tar, the Dockerfile's path in it, and its text."""

    context_tar: bytes
    dockerfile: str
    text: str
    #: the request field the text came from, named by refusals
    field: str = "build.dockerfile"


def _inline_context(dockerfile_text: str) -> bytes:
    data = dockerfile_text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _dockerfile_text(context: bytes, name: str) -> str:
    """The Dockerfile as sent (read back from the tar: the exact bytes the engine gets).

    Raises:
        Forbidden: it is no regular file in the tar (it changed while being read).
    """
    with tarfile.open(fileobj=io.BytesIO(context)) as archive:
        members = {os.path.normpath(m.name): m for m in archive.getmembers()}
        member = members.get(os.path.normpath(name))
        handle = archive.extractfile(member) if member is not None and member.isfile() else None
        if handle is None:
            raise Forbidden(
                f"build.dockerfile: {name!r} changed while the context was read (rule: the "
                "Dockerfile must be a regular file inside the build context)"
            )
        return handle.read().decode(errors="replace")


def _build_input(spec: BuildSpec, settings: Settings) -> _Input:
    """The context a build sends, checked: from the context directory, or inline text."""
    if spec.context:
        directory = _check_context(spec, settings)
        name = _check_dockerfile_path(directory, spec.dockerfile)
        tar = context_tar(directory, name, max_bytes=settings.max_build_context_mb * MIB)
        return _Input(tar, spec.dockerfile, _dockerfile_text(tar, name))
    text = spec.dockerfile_inline or ""
    return _Input(_inline_context(text), "Dockerfile", text, "build.dockerfile_inline")


def _repository(label_text: str) -> str:
    """A repository name component from a tool or relic name (Docker's grammar)."""
    return re.sub(r"[^a-z0-9]+", "-", label_text.lower()).strip("-")[:64] or "build"


def build_tag(spec: BuildSpec, label_text: str, context: bytes | None = None) -> str:
    """The tag a build gets: ``orchestrator-build/<name>:<hash of the whole input>``.

    The hash covers the context's bytes, the Dockerfile's path, the build arguments and
    the requested tag (which becomes a label of the image): two builds share a tag only
    when they would send the engine the same build.

    Args:
        spec: the request's build.
        label_text: the tool or relic name (the repository part).
        context: the context tar sent (an inline build's is derived from its text).
    """
    if context is None:
        context = _inline_context(spec.dockerfile_inline or "")
    key = {
        "version": _KEY_VERSION,
        "context": hashlib.sha256(context).hexdigest(),
        "dockerfile": spec.dockerfile if spec.context else "Dockerfile",
        "buildargs": sorted(spec.buildargs.items()),
        "tag": spec.tag,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return f"{BUILD_NAMESPACE}/{_repository(label_text)}:{digest}"


def _built_here(engine: Engine, tag: str) -> bool:
    """True when ``tag`` is an image a build of the orchestrator made (reuse it)."""
    try:
        image = engine.inspect_image(tag)
    except ImageNotFound:
        return False
    labels = image.labels
    return labels.get(label("managed")) == "true" and labels.get(label("kind")) == Kind.IMAGE


def _prepare_bases(
    engine: Engine, redis: Any, settings: Settings, source: _Input, spec: BuildSpec, network: bool
) -> None:
    """Pull the base images first (tracked pulls); without network, check their triggers.

    Raises:
        Forbidden: a base image cannot be worked out, or its ``ONBUILD`` triggers would
            make the engine download something, while builds have no network.
        ImageBuildFailed: a base image is not on the host and cannot be pulled.
    """
    try:
        bases = dockerfile_rules.base_images(source.text, spec.buildargs)
    except dockerfile_rules.UnresolvedBase as exc:
        if network:
            return  # the engine resolves and pulls it; nothing to check without a fence
        raise Forbidden(
            f"{source.field}: {exc}: its image cannot be worked out before the build, so "
            "its ONBUILD triggers cannot be checked (rule: builds have no network); write "
            f"the image, or {_NETWORK_SETTINGS}"
        ) from exc
    for ref in bases:
        try:
            ensure_image(engine, redis, settings, ref)
        except ImageNotFound as exc:
            raise ImageBuildFailed(f"build: base image {ref!r}: {exc}") from exc
        if network:
            continue
        fetched = dockerfile_rules.trigger_sources(engine.inspect_image(ref).onbuild)
        if fetched:
            raise Forbidden(
                f"{source.field}: the base image {ref!r} has an ONBUILD ADD of "
                f"{fetched[0]!r}: the Docker engine would download it itself, from the "
                f"host's network (rule: builds have no network); {_NETWORK_SETTINGS}"
            )


def _run_build(
    engine: Engine, settings: Settings, spec: BuildSpec, source: _Input, tag: str, network: bool
) -> None:
    """Build with the server's limits and labels; refuse an image over the size cap.

    Raises:
        ImageBuildFailed: the build failed, or ran past its time limit (and was stopped).
        LimitExceeded: the image is larger than the cap (it is removed).
    """
    labels = {
        label("managed"): "true",
        label("kind"): Kind.IMAGE.value,
        label("host"): settings.host_name,
        label("built-at"): str(int(time.time())),
    }
    if spec.tag:
        labels[label("requested-tag")] = spec.tag
    build = types.BuildSpec(
        context_tar=source.context_tar,
        tag=tag,
        dockerfile=source.dockerfile,
        build_args=spec.buildargs,
        labels=labels,
        network_mode="default" if network else "none",
        memory_mb=settings.build_memory_mb,
        cpu_limit=settings.build_cpu_limit,
        timeout_seconds=settings.build_timeout_seconds,
        cgroup_parent=settings.build_cgroup_parent or None,
    )
    log.info("building %s", tag)
    started = time.monotonic()
    try:
        built = engine.build_image(build)
    except ImageBuildFailed as exc:
        if time.monotonic() - started >= settings.build_timeout_seconds:
            raise ImageBuildFailed(
                f"build: {exc} (a build may run {settings.build_timeout_seconds} s: "
                "ORCHESTRATOR_BUILD_TIMEOUT_SECONDS)"
            ) from exc
        raise
    cap = settings.max_built_image_mb * MIB
    if built.size_bytes > cap:
        _remove_quietly(engine, tag)
        raise LimitExceeded(
            f"build: the image built is {built.size_bytes / MIB:.0f} MB, over the "
            f"{settings.max_built_image_mb} MB a build may produce (rule: built images are "
            "bounded in size; it was removed); raise ORCHESTRATOR_MAX_BUILT_IMAGE_MB to "
            "allow larger images"
        )


def _remove_quietly(engine: Engine, ref: str) -> bool:
    """Remove one tag (or an untagged image); False when the engine refuses or it is gone."""
    try:
        engine.remove_image(ref)
        return True
    except ImageNotFound:
        return True
    except DockerUnavailable:
        raise
    except DockerError as exc:  # a container started using it meanwhile
        log.info("image %s kept: %s", ref, exc)
        return False


def build_image(
    engine: Engine,
    redis: Any,
    settings: Settings,
    spec: BuildSpec,
    label: str,
    on_build: Callable[[], None] = lambda: None,
) -> str:
    """Build ``spec`` under the server's build policy; builds of one input are serialized
    per host, and an input built before (its tag is present) is not built again.

    Args:
        engine: this host's engine.
        redis: a redis-py client (the per-host build lock, use records).
        settings: the worker's settings (the build policy and limits).
        spec: the request's build.
        label: names the image's repository (the tool or relic name).
        on_build: called when a build actually starts (for progress reporting).

    Returns:
        The tag built, ``orchestrator-build/<name>:<hash>``.

    Raises:
        Forbidden: builds are off, or the request breaks the build policy (the message
            names the field, the rule and the setting).
        QuotaExceeded: the host's committed memory has no room for the build's
            ``build_memory_mb``.
        LimitExceeded: the context or the image built is over its size cap.
        InvalidRequest: the context or the Dockerfile does not exist.
        ImageBuildFailed: the build failed or ran past its time limit; the message has
            the builder's error.
    """
    check_builds_allowed(settings)
    network = build_network_allowed(settings)
    source = _build_input(spec, settings)
    check_dockerfile(source.text, network, source.field)
    tag = build_tag(spec, label, source.context_tar)
    seconds = max(LOCK_SECONDS, 2 * settings.build_timeout_seconds + 120)
    lock = redis.lock(keys.lock(f"build:{settings.host_name}:{tag}"), timeout=seconds)
    with lock:
        if not _built_here(engine, tag):
            _prepare_bases(engine, redis, settings, source, spec, network)
            # Its RUN steps commit memory on the host like a container: counted while it runs.
            expires = time.time() + settings.build_timeout_seconds + BUILD_QUOTA_MARGIN_SECONDS
            with Quotas(redis, settings).building(tag, settings.build_memory_mb, expires):
                on_build()
                _run_build(engine, settings, spec, source, tag, network)
    tracking.record_use(redis, settings.host_name, tag, time.time())
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
        label: names a build's repository (the tool or relic name).
        progress: ``progress("BUILDING")`` / ``progress("PULLING")`` is called only when
            that work happens.

    Returns:
        The image reference to create the container from.

    Raises:
        Forbidden / LimitExceeded / InvalidRequest: the build breaks the build policy.
        ImageNotFound / ImageBuildFailed: there is no such image, or the build failed.
    """
    if build is not None:
        return build_image(engine, redis, settings, build, label, lambda: progress("BUILDING"))
    assert image is not None
    return ensure_image(engine, redis, settings, image, lambda: progress("PULLING"))


# -- reaping: the images the orchestrator brought, within a disk budget ---------------------


@dataclass(frozen=True)
class _Held:
    """One reference to an image the orchestrator brought to this host."""

    #: the tag to remove (an untagged built image: its id)
    ref: str
    image_id: str
    size: int
    last_used: float
    #: unix time it was built; None for a pulled image
    built_at: float | None
    #: removing ``ref`` removes the image (it has no other tag)
    sole: bool


def _held_images(engine: Engine, redis: Any, host: str) -> list[_Held]:
    """Every image reference this host's orchestrator built or pulled (gone ones forgotten)."""
    used = tracking.last_used(redis, host)
    held = []
    for image in engine.list_images(label_filter(kind=Kind.IMAGE.value, host=host)):
        try:
            built_at = float(image.labels.get(label("built-at")) or 0)
        except ValueError:
            built_at = 0.0
        ours = [t for t in image.tags if t.startswith(BUILD_NAMESPACE + "/")]
        # Tagged only outside our namespace: someone (the operator) took it over.
        refs = ours if ours else ([] if image.tags else [image.id])
        for ref in refs:
            last = max(used.get(ref, 0.0), built_at)
            sole = len(image.tags) <= 1
            held.append(_Held(ref, image.id, image.size_bytes, last, built_at, sole))
    gone = []
    for ref in sorted(tracking.pulled(redis, host)):
        try:
            image = engine.inspect_image(ref)
        except ImageNotFound:
            gone.append(ref)
            continue
        held.append(
            _Held(ref, image.id, image.size_bytes, used.get(ref, 0.0), None, len(image.tags) <= 1)
        )
    known = {h.ref for h in held}
    tracking.forget(redis, host, gone + [ref for ref in used if ref not in known])
    return held


def _total_bytes(held: list[_Held]) -> int:
    return sum({h.image_id: h.size for h in held}.values())


def reap_images(engine: Engine, redis: Any, settings: Settings, now: float) -> dict[str, Any]:
    """Remove unused images the orchestrator built or pulled on this host.

    Built images older than ``built_image_max_age_seconds`` go; then, while the images
    it brought (each counted whole, shared layers included) exceed
    ``image_disk_budget_mb``, the least recently used ones go. An image any container
    uses (even a stopped one) or used within ``image_grace_seconds`` stays; an image the
    orchestrator did not build or pull is never a candidate; a reference removed from an
    image that has other tags only loses that tag.

    Args:
        engine: this host's engine.
        redis: a redis-py client (pull and use records).
        settings: the worker's settings (host name, budget, age, grace).
        now: the unix time to judge ages by.

    Returns:
        ``{"removed": [{"image", "reason", "size_mb"}], "errors": [...]}``.
    """
    host = settings.host_name
    report: dict[str, Any] = {"removed": [], "errors": []}
    held = _held_images(engine, redis, host)
    total = _total_bytes(held)
    budget = settings.image_disk_budget_mb * MIB
    old = [
        h
        for h in held
        if h.built_at is not None and h.built_at < now - settings.built_image_max_age_seconds
    ]
    if total <= budget and not old:
        return report  # the common case: no need to list every container
    in_use = {c.image_id for c in engine.list_containers()}
    fresh_since = now - settings.image_grace_seconds
    removed: list[str] = []
    freed: set[str] = set()

    def remove(h: _Held, reason: str) -> None:
        nonlocal total
        if h.ref in removed or h.image_id in in_use or h.last_used >= fresh_since:
            return
        if not _remove_quietly(engine, h.ref):
            return
        removed.append(h.ref)
        report["removed"].append({"image": h.ref, "reason": reason, "size_mb": h.size // MIB})
        if h.sole and h.image_id not in freed:
            freed.add(h.image_id)
            total -= h.size

    age = settings.built_image_max_age_seconds
    for h in old:
        remove(h, f"built more than {age} s ago (ORCHESTRATOR_BUILT_IMAGE_MAX_AGE_SECONDS)")
    for h in sorted(held, key=lambda h: h.last_used):
        if total <= budget:
            break
        remove(
            h,
            f"least recently used while over the {settings.image_disk_budget_mb} MB "
            "budget (ORCHESTRATOR_IMAGE_DISK_BUDGET_MB)",
        )
    tracking.forget(redis, host, removed)
    return report


# -- build contexts: a directory as a tar, as ``docker build`` sends it --------------------


def context_tar(
    directory: str, dockerfile: str = "Dockerfile", *, max_bytes: int | None = None
) -> bytes:
    """A build context: the files of ``directory`` that its ``.dockerignore`` leaves in.

    As the docker CLI (and docker-py) do: each ``.dockerignore`` line is a pattern
    relative to the context (``*``, ``?``, ``[...]``, ``**`` for any number of
    directories; ``!`` re-includes); the last matching line wins; a pattern excluding a
    directory excludes what is in it; the Dockerfile is always sent. Symlinks are sent
    as symlinks, never followed (a file is opened without following one either, in case
    it was swapped for one meanwhile); sockets are left out; devices and FIFOs are sent
    as such, never read.

    Args:
        directory: the context directory (already checked against the build roots).
        dockerfile: the Dockerfile's path in the context.
        max_bytes: the largest archive allowed (None: no limit).

    Returns:
        An uncompressed tar archive.

    Raises:
        LimitExceeded: the archive would be larger than ``max_bytes`` (nothing more is
            read once it is).
        InvalidRequest: the ``.dockerignore`` is not a regular file of at most 1 MiB.
    """
    context = _Context(directory, os.path.normpath(dockerfile))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for relative in context.files():
            _add(archive, os.path.join(directory, relative), relative, max_bytes)
            if max_bytes is not None and buffer.tell() > max_bytes:
                raise _context_too_large(max_bytes)
    return buffer.getvalue()


def _context_too_large(max_bytes: int) -> LimitExceeded:
    return LimitExceeded(
        f"build.context: the context is larger than {max_bytes // MIB} MB (rule: a build "
        "context is bounded in size; a .dockerignore can leave files out); raise "
        "ORCHESTRATOR_MAX_BUILD_CONTEXT_MB to allow larger contexts"
    )


def _open_regular(path: str) -> Any:
    """Open a regular file for reading, never through a symlink and never blocking on a
    FIFO; None when ``path`` is no longer a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


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
    """The patterns of ``.dockerignore`` (none when there is no such file).

    Raises:
        InvalidRequest: it is not a regular file (a symlink, a FIFO, a device) or is over
            1 MiB: it is the request's file, read on the worker.
    """
    path = os.path.join(directory, ".dockerignore")
    if not os.path.lexists(path):
        return []
    handle = _open_regular(path)
    if handle is None:
        raise InvalidRequest("build.context: its .dockerignore must be a regular file")
    with handle:
        data = handle.read(_IGNORE_FILE_BYTES + 1)
    if len(data) > _IGNORE_FILE_BYTES:
        raise InvalidRequest("build.context: its .dockerignore is larger than 1 MiB")
    lines = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines()]
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


def _add(archive: tarfile.TarFile, path: str, arcname: str, max_bytes: int | None) -> None:
    info = archive.gettarinfo(path, arcname=arcname)
    if info is None:  # a socket: nothing a build can use
        return
    info.mtime = int(info.mtime)
    if not info.isfile():  # directories, symlinks, FIFOs, devices: no content to read
        archive.addfile(info)
        return
    assert archive.fileobj is not None
    if max_bytes is not None and archive.fileobj.tell() + info.size > max_bytes:
        raise _context_too_large(max_bytes)  # before reading a file too large to send
    handle = _open_regular(path)
    if handle is None:  # replaced since it was listed: send nothing in its place
        return
    with handle:
        archive.addfile(info, handle)
