"""Session volumes and bind re-checks: what a request's ``volumes`` may reach.

A named volume in a tool or relic request always means the *session's* volume of that
name. The worker makes it (:func:`session_volumes`), named with
:func:`~orchestrator.core.specs.volume_name` and labelled managed + session + host +
volume name, so session cleanup and the janitor remove it with the session; no request
can mount a volume of another session, nor one the orchestrator does not manage. Labels
are the source of truth: a volume found under the expected name is used only when its
labels say it is this session's volume of that name.

Bind mounts are checked by :func:`~orchestrator.core.specs.check_volumes` when the
request arrives and again by :func:`recheck_binds` right before the container starts,
after any pull or build, so a directory swapped for a symlink meanwhile is refused.
"""

from __future__ import annotations

from orchestrator.core.specs import check_volumes, labels, legacy_volume_name, volume_name
from orchestrator.core.types import Volume
from orchestrator.errors import Forbidden, VolumeNotFound
from orchestrator.models import VolumeMount
from orchestrator.protocol import Kind, label, parse_labels
from orchestrator.state import sessions
from orchestrator.worker.runtime import Runtime

__all__ = ["session_volumes", "ensure_volume", "volume_labels", "recheck_binds"]


def volume_labels(session_id: str, name: str, host_name: str) -> dict[str, str]:
    """The labels of a session volume: managed, its session, host and request name."""
    return labels(Kind.VOLUME, session_id, 0, host_name, volume=name)


def session_volumes(rt: Runtime, session_id: str, volumes: list[VolumeMount]) -> dict[str, str]:
    """Make sure the session has each named volume of a request.

    Args:
        rt: this worker's runtime.
        session_id: the session the request belongs to.
        volumes: the request's mounts (binds are left to the bind checks).

    Returns:
        Request volume name -> the session volume's engine name (for the spec builder).

    Raises:
        Forbidden: the engine name is held by a volume that is not this session's.
    """
    named = [(index, m.source) for index, m in enumerate(volumes) if not m.is_bind]
    if not named:
        return {}
    # The session now has objects here: cleanup visits this host, and the janitor keeps
    # the volume until the session ends (it removes volumes of unknown sessions).
    sessions.record_host(rt, session_id)
    return {
        name: ensure_volume(rt, session_id, name, f"volumes.{index}.source")
        for index, name in named
    }


def ensure_volume(rt: Runtime, session_id: str, name: str, field: str) -> str:
    """The session's volume ``name``, created (labelled) when missing.

    Args:
        rt: this worker's runtime.
        session_id: the owning session.
        name: the volume name the request gave.
        field: the request field, for error messages.

    Returns:
        The volume's engine name.

    Raises:
        Forbidden: a volume of that engine name exists and is not this session's.
    """
    engine_name = volume_name(session_id, name)
    found = _inspect(rt, engine_name)
    if found is None:
        legacy = _inspect(rt, legacy_volume_name(session_id, name))
        if legacy is not None and _of_session(legacy, session_id):
            return legacy.name  # a relic volume made before the upgrade keeps its data
        # Creating an existing volume keeps its first labels: a racing creator is caught
        # by the check below, whoever won.
        found = rt.engine.create_volume(engine_name, volume_labels(session_id, name, rt.host_name))
    _require_session_volume(found, session_id, name, field)
    return engine_name


def _inspect(rt: Runtime, name: str) -> Volume | None:
    try:
        return rt.engine.inspect_volume(name)
    except VolumeNotFound:
        return None


def _require_session_volume(volume: Volume, session_id: str, name: str, field: str) -> None:
    if _of_session(volume, session_id) and volume.labels.get(label("volume")) == name:
        return
    raise Forbidden(
        f"{field}: the engine volume {volume.name!r} is not session {session_id!r}'s volume "
        f"{name!r} (its labels say otherwise); a named volume is always the session's own"
    )


def _of_session(volume: Volume, session_id: str) -> bool:
    """A managed volume of this session: enough for one of the old naming
    (``orch-<session>-<name>``), unambiguous within a session, whose session label settles
    which session it is."""
    found = parse_labels(volume.labels)
    return found.managed and found.kind == Kind.VOLUME and found.session == session_id


def recheck_binds(rt: Runtime, volumes: list[VolumeMount]) -> None:
    """Check the request's bind mounts again, right before the engine acts on them.

    Raises:
        Forbidden: a bind source changed since the request was checked (a symlink, a
            missing path...).
    """
    check_volumes(volumes, rt.settings)
