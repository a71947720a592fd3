"""Reading the backup stream into the gateway's parts, and hashing them.

Memory stays near ``(parallel + 1) * part_size``: a part's buffer is taken when its first byte arrives and given
back once storage holds the part *and* the hashes have read it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncGenerator, AsyncIterator

from .upload_errors import UploadStreamError, describe
from .upload_model import UploadState

_INLINE_HASH = 256 * 1024  # smaller parts are hashed in the loop, larger ones in the executor
_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')


class Body:
    """A part's bytes, in a buffer of the pool.

    Parts are copied into whole buffers (rather than kept as views of the stream's chunks) so that each is hashed
    in one call: a thread hashing many pieces must take the GIL back after each one, and those hand-offs made
    hashing several times slower while the loop was busy sending (measured).
    """

    __slots__ = ("buffer", "pieces", "size")

    def __init__(self, buffer: bytearray, size: int) -> None:
        self.buffer = buffer
        self.size = size
        self.pieces = [memoryview(buffer)[:size]]


class BufferPool:
    """Part buffers, reused: a fresh 20 MiB buffer costs zeroing and page faults on every part."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._free: list[bytearray] = []

    def take(self) -> bytearray:
        """A buffer of the pool's size (reused when one is free)."""
        return self._free.pop() if self._free else bytearray(self._size)

    def give(self, body: Body) -> None:
        """Take a part's buffer back; the part must not be read any more."""
        body.pieces.clear()  # release the view, or the buffer stays exported
        self._free.append(body.buffer)


def etag_md5(etag: str) -> str | None:
    """The MD5 an ETag stands for, or None when it is not a plain MD5 (multipart, SSE-KMS…)."""
    match = _MD5_ETAG.fullmatch(etag.strip())
    return match.group(1).lower() if match else None


def _hash_part(sha256: hashlib._Hash, body: Body) -> str:
    """Add the part to the stream's SHA-256; return the part's MD5."""
    md5 = hashlib.md5(usedforsecurity=False)
    for piece in body.pieces:
        sha256.update(piece)
        md5.update(piece)
    return md5.hexdigest()


class StreamHasher:
    """The SHA-256 of the whole stream and the MD5 of each part, parts hashed one after the other, in order.

    One hashing thread at a time (not one per part in flight): on a small machine, parallel hashing threads take
    the CPU from the connection sending the parts, and the upload got slower, not faster (measured).
    """

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._last: asyncio.Task[str] | None = None
        self._loop = asyncio.get_running_loop()

    def add(self, group: asyncio.TaskGroup, body: Body) -> asyncio.Task[str]:
        """Hash ``body`` after the parts before it; the task's result is the part's MD5.

        The part's buffer must stay untouched until that task is done.
        """
        task = group.create_task(self._hash(self._last, body))
        self._last = task
        return task

    async def _hash(self, previous: asyncio.Task[str] | None, body: Body) -> str:
        if previous is not None:
            await previous
        if body.size <= _INLINE_HASH:
            return _hash_part(self._sha256, body)
        return await self._loop.run_in_executor(None, _hash_part, self._sha256, body)

    async def sha256(self) -> str:
        """The SHA-256 of every part added, once they are all hashed."""
        if self._last is not None:
            await self._last
        return self._sha256.hexdigest()


async def read_parts(
    stream: AsyncIterator[bytes], state: UploadState, pool: BufferPool
) -> AsyncGenerator[tuple[int, Body]]:
    """Re-chunk the stream into the parts of ``state`` (a buffer is only taken when its first bytes arrive).

    Raises :class:`UploadStreamError` when the stream fails, ends early or yields more than ``state.size``.
    """
    number = 1
    want = state.expected_size(1)
    buf: bytearray | None = None
    pos = 0
    read = 0
    iterator = aiter(stream)
    while True:
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            break
        except Exception as err:
            raise UploadStreamError(
                f"Reading the backup failed after {read} of {state.size} bytes: {describe(err)}",
                backup_id=state.backup_id,
            ) from err
        if not chunk:
            continue
        view = memoryview(chunk).cast("B")
        offset = 0
        length = view.nbytes
        read += length
        while offset < length:
            if number > state.part_count:
                raise UploadStreamError(
                    f"The backup stream yielded more than the {state.size} bytes announced: the backup changed "
                    "while it was read; try again",
                    backup_id=state.backup_id,
                )
            if buf is None:
                buf = pool.take()
                pos = 0
            take = min(want - pos, length - offset)
            buf[pos : pos + take] = view[offset : offset + take]
            pos += take
            offset += take
            if pos == want:
                part = Body(buf, want)
                buf = None
                yield number, part
                del part  # the consumer owns it now: keep memory at (parallel + 1) parts
                number += 1
                if number <= state.part_count:
                    want = state.expected_size(number)
    if number <= state.part_count:
        raise UploadStreamError(
            f"The backup stream ended after {read} of the {state.size} bytes announced: the backup file may be "
            "truncated or was changed while it was read; try again",
            backup_id=state.backup_id,
        )
