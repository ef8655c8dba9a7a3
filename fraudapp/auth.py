"""API keys and scopes: who may score, label, change lists, models and the simulator.

Keys come from `FRAUDAPP_API_KEYS`; with none configured the first start creates one key with
every scope in `<data dir>/api_key` (mode 0600) and logs where it is, never the key. A request
names its key in the `X-API-Key` header; `require(scope)` is the route dependency. `admin`
implies every scope. Reads are open unless `FRAUDAPP_READ_REQUIRES_KEY`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from fraudapp.settings import Settings

log = logging.getLogger(__name__)

SCOPES: tuple[str, ...] = ("score", "analyst", "admin")
KEY_FILE_NAME = "api_key"
HEADER = "X-API-Key"

api_key_header = APIKeyHeader(
    name=HEADER,
    auto_error=False,
    description="An API key. Scopes: score (decisions, ingest), analyst (labels, lists), admin "
    "(models, simulator; implies all).",
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: a name safe to store and log, and its scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class ApiKeys:
    """The configured keys, looked up by their SHA-256 so the keys themselves are not kept."""

    def __init__(self, keys: dict[str, list[str]]) -> None:
        self._by_digest: dict[str, Principal] = {}
        for key, scopes in keys.items():
            digest = _digest(key)
            unknown = sorted(set(scopes) - set(SCOPES))
            if unknown:
                raise ValueError(f"API key {digest[:8]}: unknown scopes {unknown}")
            name = f"{'+'.join(sorted(scopes)) or 'none'}:{digest[:8]}"
            self._by_digest[digest] = Principal(name, frozenset(scopes))

    def __len__(self) -> int:
        return len(self._by_digest)

    def identify(self, key: str | None) -> Principal | None:
        if not key:
            return None
        return self._by_digest.get(_digest(key))


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_keys(settings: Settings) -> ApiKeys:
    """The configured keys, or the generated all-scope key of the data dir (created once)."""
    if settings.api_keys:
        return ApiKeys({k: list(v) for k, v in settings.api_keys.items()})
    path = settings.data_dir / KEY_FILE_NAME
    key = read_or_create_key_file(path)
    log.info("auth.generated_key path=%s scopes=%s", path.resolve(), ",".join(SCOPES))
    return ApiKeys({key: list(SCOPES)})


def read_or_create_key_file(path: Path) -> str:
    """The key stored at `path`, created with a new random key (mode 0600) when missing."""
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if key:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    # Created 0600 from the start: the key is never readable by others, even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")
    os.chmod(path, 0o600)
    log.info("auth.key_created path=%s", path.resolve())
    return key


def _keys(request: Request) -> ApiKeys:
    keys: ApiKeys = request.state.runtime.api_keys
    return keys


def _unauthorized(key: str | None) -> HTTPException:
    detail = (
        f"this endpoint needs an API key in the {HEADER} header"
        if not key
        else "the API key is not valid"
    )
    return HTTPException(401, detail, headers={"WWW-Authenticate": HEADER})


def require(scope: str) -> Any:
    """A dependency admitting requests whose key has `scope` (401 without a valid key, 403
    with a key lacking the scope); it returns the `Principal`. Dependencies here are `async`:
    FastAPI would run a plain `def` in a worker thread, a thread hop per request."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(
        request: Request, key: Annotated[str | None, Security(api_key_header)]
    ) -> Principal:
        principal = _keys(request).identify(key)
        if principal is None:
            raise _unauthorized(key)
        if not principal.allows(scope):
            raise HTTPException(
                403, f"the API key {principal.name} lacks the {scope!r} scope this needs"
            )
        return principal

    return Depends(dependency)


async def reader(
    request: Request, key: Annotated[str | None, Security(api_key_header)]
) -> Principal | None:
    """Reads are open (a key, valid or not, is ignored) unless FRAUDAPP_READ_REQUIRES_KEY:
    then any valid key may read."""
    principal = _keys(request).identify(key)
    if principal is None and request.state.runtime.settings.read_requires_key:
        raise _unauthorized(key)
    return principal


ScoreDep = Annotated[Principal, require("score")]
AnalystDep = Annotated[Principal, require("analyst")]
AdminDep = Annotated[Principal, require("admin")]
ReaderDep = Annotated[Principal | None, Depends(reader)]
