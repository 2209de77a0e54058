"""API keys: ``Authorization: Bearer KEY``, roles ``client``, ``reviewer`` and ``admin``, hashed.

Keys are 256-bit random tokens, so a plain SHA-256 of the key is as strong as a slow password
hash here (there is nothing to brute-force) while costing microseconds per request; only the
hashes are kept on disk and in memory. Local mode writes the plain keys once, for the user, to
``credentials.json`` (mode 0600). Every service reads the same keys file, so one set of keys
works for all of them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Collection, Iterable
from pathlib import Path

from pydantic_settings import BaseSettings

from medops.errors import ForbiddenError, InvalidInputError, UnauthorizedError

log = logging.getLogger("medops.service.auth")

ROLES = ("client", "reviewer", "admin")
"""``client``: inference and reads; ``reviewer``: feedback on predictions; ``admin``: all."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(role: str) -> str:
    return f"medops-{role}-{secrets.token_urlsafe(32)}"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _create_private(path: Path, text: str) -> bool:
    """Write ``path`` whole and at once unless it exists; False when another process won."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.link(tmp, path)  # atomic and refuses to replace: the first service to start wins
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


class Authenticator:
    """Checks bearer keys against hashes; ``admin`` may do everything any other role may."""

    def __init__(self, hashes: Iterable[tuple[str, str]], *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._roles: dict[str, str] = {}
        for role, digest in hashes:
            if role not in ROLES:
                raise InvalidInputError(f"API key role {role!r} is not one of {ROLES}")
            self._roles[digest] = role

    @classmethod
    def from_file(cls, path: Path, *, enabled: bool = True) -> Authenticator:
        try:
            doc = json.loads(path.read_text())
            entries = [(str(k["role"]), str(k["sha256"])) for k in doc["keys"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(
                f"API keys file {path.name} is unreadable or malformed ({exc})"
            ) from None
        return cls(entries, enabled=enabled)

    @classmethod
    def local(
        cls, keys_path: Path, credentials_path: Path, *, enabled: bool = True
    ) -> Authenticator:
        """Load the hashed keys; on the first start make one key per role."""
        if keys_path.is_file():
            return cls.from_file(keys_path, enabled=enabled)
        plain = {role: new_key(role) for role in ROLES}
        doc = {"keys": [{"role": r, "sha256": hash_key(k)} for r, k in plain.items()]}
        if not _create_private(keys_path, json.dumps(doc, indent=2)):
            return cls.from_file(keys_path, enabled=enabled)  # another service made them
        _write_private(credentials_path, json.dumps(plain, indent=2))
        log.warning(
            "API keys created: a client, a reviewer and an admin key were written (mode 0600)",
            extra={"credentials_file": str(credentials_path.resolve())},
        )
        return cls(((r, hash_key(k)) for r, k in plain.items()), enabled=enabled)

    def role_of(self, authorization: str | None) -> str:
        """The role of the key in an ``Authorization`` header; 401 when absent, 403 when unknown."""
        if not authorization:
            raise UnauthorizedError("missing API key: send 'Authorization: Bearer KEY'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("malformed Authorization header: expected 'Bearer KEY'")
        digest = hash_key(token.strip())
        for known, role in self._roles.items():
            if hmac.compare_digest(known, digest):
                return role
        # A key was presented but is not ours: refused (403), not merely unauthenticated.
        raise ForbiddenError("API key not recognised")

    def check(self, authorization: str | None, needed: str | Collection[str]) -> str:
        """Authenticate and authorise for one role or any of several (``admin`` always passes);
        returns the caller's role (``anonymous`` when authentication is off)."""
        if not self.enabled:
            return "anonymous"
        allowed = {needed} if isinstance(needed, str) else set(needed)
        role = self.role_of(authorization)
        if role != "admin" and role not in allowed:
            wanted = " or ".join(sorted(allowed | {"admin"}))
            raise ForbiddenError(f"this endpoint needs a key of role {wanted}, not {role}")
        return role


class ApiKeySettings(BaseSettings):
    """The API-key settings every service has; each service's class gives them its prefix."""

    auth_enabled: bool = True
    """Require ``Authorization: Bearer KEY`` on every endpoint but health and metrics."""

    api_keys_file: Path | None = None
    """JSON file of hashed API keys (``{"keys": [{"role": ..., "sha256": ...}]}``), shared by
    every service; defaults to ``<home>/gateway/api-keys.json``."""

    credentials_file: Path | None = None
    """Where local mode writes the plain keys for the user (mode 0600); defaults to
    ``<home>/credentials.json``."""

    local_mode: bool = True
    """Generate a client, a reviewer and an admin key on the first start when no key exists."""

    @property
    def medops_home(self) -> Path:
        """The medops home the default key files live under."""
        raise NotImplementedError

    @property
    def keys_path(self) -> Path:
        # Under gateway/ because the gateway wrote it first: existing homes keep their keys.
        return self.api_keys_file or self.medops_home / "gateway" / "api-keys.json"

    @property
    def credentials_path(self) -> Path:
        return self.credentials_file or self.medops_home / "credentials.json"

    def authenticator(self) -> Authenticator:
        """The service's key checker: local mode makes keys once, a cluster mounts them."""
        if self.local_mode:
            return Authenticator.local(
                self.keys_path, self.credentials_path, enabled=self.auth_enabled
            )
        if self.auth_enabled:
            return Authenticator.from_file(self.keys_path)
        return Authenticator((), enabled=False)
