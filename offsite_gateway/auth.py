"""Instance tokens: 256 random bits, shown once, stored as a SHA-256 hash.

High-entropy random tokens need no slow password hash: nobody can brute-force 256 bits, so a plain SHA-256 of the
token is as safe and lets a request find its instance by an indexed lookup of the hash.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import unicodedata
import uuid

from .store import Instance, Store, UnknownInstance

TOKEN_BYTES = 32
MAX_NAME_LENGTH = 100
TOKEN_RE = re.compile(r"[A-Za-z0-9_\-]{1,512}")  # what `new_token` makes, with room to spare


def new_token() -> str:
    """A new bearer token (43 URL-safe characters, 256 random bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """What the database stores and looks up: the token's SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def validate_instance_name(name: str) -> str:
    """An instance name: 1..100 printable characters, no surrounding spaces."""
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"an instance name has 1 to {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(char).startswith("C") for char in name):
        raise ValueError("an instance name must not contain control characters")
    return name


async def add_instance(store: Store, name: str, now: float | None = None) -> tuple[Instance, str]:
    """Create an instance; return it and its token (the only time the token exists outside the caller)."""
    instance = Instance(
        id=uuid.uuid4().hex, name=validate_instance_name(name), created_at=time.time() if now is None else now
    )
    token = new_token()
    await store.create_instance(instance, hash_token(token))
    return instance, token


async def revoke_instance(store: Store, name: str, now: float | None = None) -> Instance | None:
    """Revoke the active instance with this name: its token gets 401 from now on, and its upload in progress is
    marked failed (`domain.abort_instance_uploads` aborts it in storage). None if there is none."""
    return await store.revoke_instance(name.strip(), time.time() if now is None else now)


async def rotate_token(store: Store, name: str) -> str:
    """Give the active instance with this name a new token and return it (the only time it exists outside).

    The instance keeps its id and its backups; only the new token's hash is stored, in place of the old one's, so
    the old token gets 401 from the next request on. Raise `UnknownInstance` (a `LookupError`) if no active
    instance has this name: none ever did, or it was revoked (a revoked instance never gets a token again).
    """
    name = name.strip()
    token = new_token()
    if await store.rotate_token(name, hash_token(token)) is None:
        raise UnknownInstance(name)
    return token


async def authenticate(store: Store, authorization: str | None) -> Instance | None:
    """The active instance an `Authorization: Bearer <token>` header belongs to, if any."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    # Anything but a token's characters (a byte that is not UTF-8, a control character) is no token: refused
    # before it is hashed, which could not encode it.
    if scheme.lower() != "bearer" or not TOKEN_RE.fullmatch(token):
        return None
    return await store.instance_by_token_hash(hash_token(token))
