"""API keys: ``Authorization: Bearer KEY``, roles ``client`` and ``admin``, stored hashed.

Keys are 256-bit random tokens, so a plain SHA-256 of the key is as strong as a slow password
hash here (there is nothing to brute-force) while costing microseconds per request; only the
hashes are kept on disk and in memory. Local mode writes the plain keys once, for the user, to
``credentials.json`` (mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from medops.errors import ForbiddenError, InvalidInputError, UnauthorizedError

log = logging.getLogger("medops.gateway.auth")

ROLES = ("client", "admin")


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


class Authenticator:
    """Checks bearer keys against hashes; ``admin`` may do everything ``client`` may."""

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
        """Load the hashed keys; on the first start make a client and an admin key."""
        if keys_path.is_file():
            return cls.from_file(keys_path, enabled=enabled)
        plain = {role: new_key(role) for role in ROLES}
        doc = {"keys": [{"role": r, "sha256": hash_key(k)} for r, k in plain.items()]}
        _write_private(keys_path, json.dumps(doc, indent=2))
        _write_private(credentials_path, json.dumps(plain, indent=2))
        log.warning(
            "API keys created: a client and an admin key were written (mode 0600)",
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

    def check(self, authorization: str | None, needed: str) -> str:
        """Authenticate and authorise; returns the caller's role (``anonymous`` when off)."""
        if not self.enabled:
            return "anonymous"
        role = self.role_of(authorization)
        if needed == "admin" and role != "admin":
            raise ForbiddenError("this endpoint needs an admin key")
        return role
