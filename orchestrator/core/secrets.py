"""Secret parameter values on the wire: encrypted between client and worker (pure).

A request's ``secret_parameters`` travel through Redis (the broker's queue, its
unacknowledged-message hash, retries, forwards) and would sit there, and in the append-only
file, in plain text for as long as a run is queued or in progress. The client therefore
encrypts every value with a key it shares with the workers (``ORCHESTRATOR_SECRET_KEY``, a
`Fernet <https://cryptography.io/en/latest/fernet/>`_ key: AES-128-CBC with an HMAC-SHA256,
so a token cannot be altered unnoticed), and a worker decrypts it in memory only, right
before it builds the container's environment.

The wire form of one value is ``{"$encrypted": "<Fernet token>"}``. The token encrypts the
JSON ``{"n": <variable name>, "v": <value>}``: a token is valid under the variable name it
was made for only, so a request cannot move a token to another name. A value that is not in
this form is plain text; workers accept it (a plain Celery client), and it is then the
sender's responsibility that it sat in Redis as sent.

``ORCHESTRATOR_SECRET_KEY`` may hold several comma-separated keys: the first encrypts, all
of them decrypt (key rotation: add the new key first everywhere, then drop the old one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from orchestrator.errors import Forbidden, InvalidRequest
from orchestrator.models import RelicExecRequest, RelicStartRequest, ToolExecutionRequest

if TYPE_CHECKING:  # Settings validates its key with this module: no import cycle at run time
    from orchestrator.settings import Settings

R = TypeVar("R", ToolExecutionRequest, RelicStartRequest, RelicExecRequest)

__all__ = [
    "ENCRYPTED_FIELD",
    "KEY_SETTING",
    "PLAINTEXT_SETTING",
    "Keyring",
    "generate_key",
    "keyring",
    "is_encrypted",
    "encrypt_value",
    "decrypt_value",
    "seal",
    "reveal",
    "seal_payload",
    "settings_keyring",
    "reveal_request",
]

ENCRYPTED_FIELD = "$encrypted"
KEY_SETTING = "ORCHESTRATOR_SECRET_KEY"
PLAINTEXT_SETTING = "ORCHESTRATOR_DEV_ALLOW_PLAINTEXT_SECRETS"
SECRETS_FIELD = "secret_parameters"


class Keyring:
    """The configured Fernet keys: the first encrypts, every one decrypts.

    Args:
        keys: urlsafe base64 Fernet keys (32 bytes each), newest first.

    Raises:
        ValueError: a key is not a Fernet key (the message says which, never the key).
    """

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("no key given")
        fernets = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key.encode()))
            except (ValueError, TypeError):
                raise ValueError(
                    f"key {position} is not a Fernet key (32 urlsafe-base64 "
                    'bytes); generate one with `python -c "from cryptography.fernet import '
                    'Fernet; print(Fernet.generate_key().decode())"`'
                ) from None
        self._fernet = MultiFernet(fernets)

    def encrypt(self, data: bytes) -> str:
        """A Fernet token of ``data`` under the first key."""
        return self._fernet.encrypt(data).decode("ascii")

    def decrypt(self, token: str) -> bytes:
        """The data of a token made under any of the keys.

        Raises:
            cryptography.fernet.InvalidToken: no key opens it, or it was altered.
        """
        return self._fernet.decrypt(token.encode("ascii"))


def generate_key() -> str:
    """A new random key for ``ORCHESTRATOR_SECRET_KEY``."""
    return Fernet.generate_key().decode("ascii")


def parse_keys(text: str) -> list[str]:
    """The comma-separated keys of the setting, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def keyring(text: str | None) -> Keyring | None:
    """The keyring of a ``ORCHESTRATOR_SECRET_KEY`` value; None when it is unset or empty.

    Raises:
        ValueError: a key is malformed.
    """
    keys = parse_keys(text or "")
    return Keyring(keys) if keys else None


def settings_keyring(settings: Settings) -> Keyring | None:
    """The keyring of ``settings.secret_key``; None when no key is set."""
    key = settings.secret_key
    return keyring(key.get_secret_value() if key is not None else None)


def is_encrypted(value: Any) -> bool:
    """True for the wire form ``{"$encrypted": "<token>"}``."""
    return (
        isinstance(value, dict) and len(value) == 1 and isinstance(value.get(ENCRYPTED_FIELD), str)
    )


def encrypt_value(name: str, value: Any, ring: Keyring) -> dict[str, str]:
    """The wire form of one secret value, bound to its variable ``name``."""
    plain = json.dumps({"n": name, "v": value}, separators=(",", ":"))
    return {ENCRYPTED_FIELD: ring.encrypt(plain.encode())}


def decrypt_value(name: str, value: Any, ring: Keyring | None) -> Any:
    """The plain value of one secret parameter (a plain-text value is returned as is).

    Raises:
        InvalidRequest: the value is encrypted but this side has no key, or none of its keys
            opens it (the message names the field and the setting).
        Forbidden: the token was made for another variable name.
    """
    if not is_encrypted(value):
        return value
    field = f"{SECRETS_FIELD}.{name}"
    if ring is None:
        raise InvalidRequest(
            f"{field}: the value is encrypted but this worker has no {KEY_SETTING} to decrypt "
            "it; give the workers the clients' key"
        )
    try:
        data = json.loads(ring.decrypt(value[ENCRYPTED_FIELD]))
    except (InvalidToken, ValueError, UnicodeError):
        raise InvalidRequest(
            f"{field}: the encrypted value does not open with this worker's {KEY_SETTING} "
            "(the client used another key, or the token was altered)"
        ) from None
    if not isinstance(data, dict) or data.get("n") != name:
        raise Forbidden(
            f"{field}: the encrypted value was made for another variable; a token is valid "
            f"only under its own name (rule: tokens are bound to names; no setting allows this)"
        )
    plain = data.get("v")
    if isinstance(plain, str) and "\x00" in plain:
        raise InvalidRequest(f"{field}: value contains NUL")
    return plain


def seal(params: Mapping[str, Any], ring: Keyring) -> dict[str, Any]:
    """Every plain value of ``params`` encrypted; values already encrypted are kept."""
    return {
        name: value if is_encrypted(value) else encrypt_value(name, value, ring)
        for name, value in params.items()
    }


def reveal(params: Mapping[str, Any], ring: Keyring | None) -> dict[str, Any]:
    """Every encrypted value of ``params`` decrypted (in memory only: never store the result).

    Raises:
        InvalidRequest / Forbidden: see :func:`decrypt_value`.
    """
    return {name: decrypt_value(name, value, ring) for name, value in params.items()}


def seal_payload(
    payload: dict[str, Any], ring: Keyring | None, allow_plaintext: bool
) -> dict[str, Any]:
    """A request's JSON with its ``secret_parameters`` in wire form, ready to send.

    Args:
        payload: the request as JSON (a dict that may hold ``secret_parameters``).
        ring: the sender's keyring; None when no key is configured.
        allow_plaintext: with no key, send plain values anyway (development only).

    Returns:
        A copy with every secret value encrypted, or ``payload`` itself when it has nothing
        to encrypt (or no key and plain text is allowed).

    Raises:
        Forbidden: plain secret values, no key and plain text not allowed; the message names
            the field, the rule and both settings.
    """
    params = payload.get(SECRETS_FIELD)
    if not isinstance(params, dict) or all(is_encrypted(v) for v in params.values()):
        return payload
    if ring is None:
        if allow_plaintext:
            return payload
        names = ", ".join(sorted(n for n, v in params.items() if not is_encrypted(v)))
        raise Forbidden(
            f"{SECRETS_FIELD} ({names}): secret values are sent encrypted only (rule: they would "
            f"otherwise sit in Redis in plain text while the run is queued and in progress); "
            f"set {KEY_SETTING} to the workers' Fernet key, or for development only "
            f"{PLAINTEXT_SETTING}=true"
        )
    return {**payload, SECRETS_FIELD: seal(params, ring)}


def reveal_request(request: R, ring: Keyring | None) -> R:
    """A copy of ``request`` holding its secret values decrypted: keep it in memory only.

    Raises:
        InvalidRequest / Forbidden: see :func:`decrypt_value`.
    """
    if not request.secret_parameters:
        return request
    return request.model_copy(update={SECRETS_FIELD: reveal(request.secret_parameters, ring)})
