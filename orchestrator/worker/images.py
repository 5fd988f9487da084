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
import tarfile
from collections.abc import Callable
from typing import Any

from orchestrator.core.specs import path_within
from orchestrator.engine.translate import docker_errors
from orchestrator.errors import DockerUnavailable, ImageNotFound, InvalidRequest
from orchestrator.models import BuildSpec
from orchestrator.settings import Settings
from orchestrator.state import keys

__all__ = ["ensure_image", "build_image", "build_tag", "resolve_image"]

log = logging.getLogger(__name__)
LOCK_SECONDS = 1800


def _has_image(docker_client: Any, image: str) -> bool:
    try:
        with docker_errors(f"inspect image {image}"):
            docker_client.images.get(image)
        return True
    except ImageNotFound:
        return False


def ensure_image(
    docker_client: Any,
    redis: Any,
    settings: Settings,
    image: str,
    on_pull: Callable[[], None] = lambda: None,
) -> str:
    """Return ``image`` once it is on this host, pulling it (once per host) if missing.

    ``on_pull`` is called when a pull is actually needed (for progress reporting).

    Raises:
        ImageNotFound: it is not local and the pull failed.
    """
    if _has_image(docker_client, image):
        return image
    on_pull()
    lock = redis.lock(keys.lock(f"pull:{settings.host_name}:{image}"), timeout=LOCK_SECONDS)
    with lock:
        if _has_image(docker_client, image):
            return image
        repository, tag = _split_tag(image)
        log.info("pulling %s", image)
        try:
            with docker_errors(f"pull image {image}"):
                docker_client.images.pull(repository, tag=tag)
        except DockerUnavailable:
            raise
        except Exception as exc:
            raise ImageNotFound(
                f"image: {image!r} is not on host {settings.host_name} and could not be pulled: "
                f"{exc}"
            ) from exc
    return image


def _split_tag(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image, None
    name, _, tag = image.rpartition(":")
    if name and "/" not in tag:
        return name, tag
    return image, "latest"


def build_tag(spec: BuildSpec, label: str) -> str:
    """The tag a build gets: the requested one, or one derived from the Dockerfile text."""
    if spec.tag:
        return spec.tag
    digest = hashlib.sha256(
        (spec.dockerfile_inline or f"{spec.context}:{spec.dockerfile}").encode()
    ).hexdigest()[:16]
    return f"orchestrator-build/{label.lower()}:{digest}"


def _inline_context(dockerfile_text: str) -> io.BytesIO:
    data = dockerfile_text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


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
    docker_client: Any,
    redis: Any,
    settings: Settings,
    spec: BuildSpec,
    label: str,
    on_build: Callable[[], None] = lambda: None,
) -> str:
    """Build ``spec`` and tag it; builds of one tag are serialized per host.

    Inline Dockerfiles whose derived tag already exists are not rebuilt.

    Raises:
        InvalidRequest: the context is not an allowed directory.
        ImageBuildFailed: the build failed; the message has the builder's error.
    """
    tag = build_tag(spec, label)
    context = _check_context(spec, settings) if spec.context else None
    lock = redis.lock(keys.lock(f"build:{settings.host_name}:{tag}"), timeout=LOCK_SECONDS)
    with lock:
        if spec.dockerfile_inline and not spec.tag and _has_image(docker_client, tag):
            return tag
        on_build()
        kwargs: dict[str, Any] = {"tag": tag, "rm": True, "forcerm": True}
        if spec.buildargs:
            kwargs["buildargs"] = spec.buildargs
        if context:
            kwargs["path"] = context
            kwargs["dockerfile"] = spec.dockerfile
        else:
            kwargs["fileobj"] = _inline_context(spec.dockerfile_inline or "")
            kwargs["custom_context"] = True
        log.info("building %s", tag)
        with docker_errors(f"build image {tag}"):
            docker_client.images.build(**kwargs)
    return tag


def resolve_image(
    docker_client: Any,
    redis: Any,
    settings: Settings,
    image: str | None,
    build: BuildSpec | None,
    label: str,
    progress: Callable[[str], None] = lambda state: None,
) -> str:
    """The image to run: built from ``build`` or ensured from ``image``.

    ``progress("BUILDING")`` / ``progress("PULLING")`` is called only when that work happens.
    """
    if build is not None:
        return build_image(
            docker_client, redis, settings, build, label, lambda: progress("BUILDING")
        )
    assert image is not None
    return ensure_image(docker_client, redis, settings, image, lambda: progress("PULLING"))
