"""How many connections the process can hold: its open-file limit, raised where allowed, and what it leaves.

Every connection is a file descriptor. When none is left, `accept()` fails and the gateway stops answering
anyone, idle attackers and real clients alike. So the gateway caps its connections below the limit, keeping
room for what else needs descriptors (storage connections, the database, logs) and for the connections that
arrive in one burst before the cap can act: asyncio accepts up to `accept_batch` connections each time the
listening socket is readable, and about three such batches can be in flight before the first one's connections
are seen. (The kernel's queue of connections waiting to be accepted holds no descriptor: it stays long.)
Over the cap the connections idle longest are closed, and up to twice the cap may be open meanwhile
(`server.ConnectionGuard`): what is left is shared so that twice the cap and three batches fit.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
from dataclasses import dataclass

from .storage import MAX_POOL_CONNECTIONS

LISTEN_BACKLOG = (
    1024  # the kernel's queue of connections not accepted yet: many instances may connect at once
)
MAX_ACCEPT_BATCH = 128  # connections asyncio accepts in one turn at most (aiohttp's default)
STORAGE_FILES = MAX_POOL_CONNECTIONS  # the S3 client's connections
OTHER_FILES = 32  # the database and its WAL, log files, the listening socket, the event loop's own
BATCHES_IN_FLIGHT = 3
MIN_CONNECTIONS = 8
CEILING = 1 << 20  # what "unlimited" is raised to


class FileLimitTooLow(RuntimeError):
    """The open-file limit leaves no room to serve."""

    def __init__(self, limit: int, needed: int) -> None:
        super().__init__(
            f"the open-file limit {limit} leaves no room for connections: the gateway needs at least {needed} "
            f"(raise it, e.g. `ulimit -n 4096`, or LimitNOFILE= in a systemd unit)"
        )
        self.limit = limit
        self.needed = needed


@dataclass(frozen=True)
class ConnectionBudget:
    """What to serve with: a cap of `max_connections`, accepting at most `accept_batch` connections a turn."""

    file_limit: int
    max_connections: int
    accept_batch: int


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one where allowed; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return CEILING if soft == resource.RLIM_INFINITY else soft
    with contextlib.suppress(ValueError, OSError):  # not allowed here: keep the soft limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def file_limit() -> int:
    """The soft open-file limit in force."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return CEILING if soft == resource.RLIM_INFINITY else soft


def open_files() -> int:
    """How many file descriptors the process holds now (0 if the system does not tell)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(folder))
    return 0


def connection_budget(max_connections: int, limit: int, open_now: int) -> ConnectionBudget:
    """The cap and the accept queue that keep `accept()` from running out of descriptors.

    What the limit leaves once storage and the rest have theirs is shared: an eighth (at most 128) for each
    batch of accepted connections in flight, the rest for twice the cap.
    """
    spare = limit - open_now - STORAGE_FILES - OTHER_FILES
    batch = max(MIN_CONNECTIONS, min(MAX_ACCEPT_BATCH, spare // 8))
    connections = min(max_connections, (spare - BATCHES_IN_FLIGHT * batch) // 2)
    if connections < MIN_CONNECTIONS:
        needed = open_now + STORAGE_FILES + OTHER_FILES + (BATCHES_IN_FLIGHT + 2) * MIN_CONNECTIONS
        raise FileLimitTooLow(limit, 1 << (needed - 1).bit_length())
    return ConnectionBudget(limit, connections, batch)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on `host:port` (its first address) with a kernel queue of `LISTEN_BACKLOG`.

    Serve it with the accept batch as the site's backlog, then call `listen(LISTEN_BACKLOG)` on it again: asyncio
    listens again with the batch size when it starts serving, and accepts that many connections a turn.
    """
    family, _, _, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return socket.create_server(address, family=family, backlog=LISTEN_BACKLOG)
