"""API keys: who may infer, who may control models, checked before any route runs.

Keys come from settings (comma-separated) or files (one a line); only their SHA-256 digests
stay in memory, and a presented key is compared with every digest in constant time. A key
is known in logs and metrics by its id, the first 8 hex digits of its digest, never by
itself. Without any key the service is open, as it was, and says so once at start-up.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import send_refusal
from service.metrics import Metrics
from service.settings import Settings

logger = logging.getLogger(__name__)

_OPEN_PREFIXES = ("/health/", "/v2/health/", "/static/")
_DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


class Role(Enum):
    INFERENCE = "inference"
    ADMIN = "admin"


class KeyFileError(Exception):
    pass


@dataclass(frozen=True)
class _Key:
    digest: bytes
    id: str
    role: Role


def key_id(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _read_keys(inline: str, file: Path | None, setting: str) -> list[str]:
    keys = [key.strip() for key in inline.split(",") if key.strip()]
    if file is not None:
        try:
            lines = file.read_text().splitlines()
        except OSError as exc:
            raise KeyFileError(f"{setting}={file} cannot be read: {exc.strerror or exc}") from None
        # Blank lines and # comments let a key file say whose key is whose.
        stripped = (line.strip() for line in lines)
        keys += [line for line in stripped if line and not line.startswith("#")]
    return keys


class KeyRing:
    def __init__(self, inference: list[str], admin: list[str]):
        self._keys = [
            _Key(hashlib.sha256(key.encode()).digest(), key_id(key), role)
            for role, keys in ((Role.INFERENCE, inference), (Role.ADMIN, admin))
            for key in keys
        ]
        self.has_admin_keys = bool(admin)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(
            _read_keys(settings.api_keys, settings.api_keys_file, "MNIST_API_KEYS_FILE"),
            _read_keys(
                settings.admin_api_keys, settings.admin_api_keys_file, "MNIST_ADMIN_API_KEYS_FILE"
            ),
        )

    def __bool__(self) -> bool:
        return bool(self._keys)

    def find(self, presented: str) -> _Key | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for key in self._keys:  # every key, always: no early exit for a timing to tell
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


class AuthMiddleware:
    """Refuses what a request's key does not allow, in its route family's error format."""

    def __init__(self, app: ASGIApp, keys: KeyRing, settings: Settings, metrics: Metrics):
        self.app = app
        self.keys = keys
        self.metrics = metrics
        self.open_exact = {"/", "/favicon.ico"}
        if not settings.protect_metrics:
            self.open_exact.add("/metrics")
        if not settings.protect_docs:
            self.open_exact.update(_DOCS)

    def role_needed(self, path: str) -> Role | None:
        if path in self.open_exact or path.startswith(_OPEN_PREFIXES):
            return None
        if path.startswith("/v2/repository/models/") and path.endswith(("/load", "/unload")):
            return Role.ADMIN
        return Role.INFERENCE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        needed = self.role_needed(scope["path"])
        if needed is None:
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope["headers"])
        key = None if presented is None else self.keys.find(presented)
        if key is not None:
            scope.setdefault("state", {})["key_id"] = key.id
        if presented is None:
            await self._refuse(scope, send, 401, "missing", _MISSING)
        elif key is None:
            await self._refuse(scope, send, 401, "invalid", _INVALID)
        elif needed is Role.ADMIN and key.role is not Role.ADMIN:
            await self._refuse(scope, send, 403, "forbidden", _FORBIDDEN)
        else:
            await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, status: int, reason: str, why: str) -> None:
        self.metrics.auth_failures.labels(reason).inc()
        challenge = {"WWW-Authenticate": 'Bearer realm="mnist-serving"'} if status == 401 else None
        await send_refusal(scope, send, status, why, challenge)


_HOW = "send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`"
_MISSING = f"this API takes an API key: {_HOW}"
_INVALID = f"the API key is not valid: {_HOW} with a key from MNIST_API_KEYS"
_FORBIDDEN = "model control takes an admin key (MNIST_ADMIN_API_KEYS); this key may only infer"
