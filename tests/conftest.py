"""Fixtures shared by every test: loopback sockets, the local S3 servers (moto, SeaweedFS) and a throwaway
PostgreSQL cluster."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import pytest_socket

from tests.helpers.postgres import PostgresCluster, run_postgres
from tests.helpers.servers import S3Server, run_moto, run_seaweedfs


@pytest.fixture(autouse=True)
def _loopback_sockets(socket_enabled: None) -> None:
    """Allow sockets: Home Assistant's harness still refuses every host but 127.0.0.1."""


@contextmanager
def _sockets_for_session_setup() -> Iterator[None]:
    """Session fixtures are set up before the per-test socket allowance: open sockets for the setup only.

    Afterwards sockets are as they were: blocked before a test's allowance, allowed for a test that starts a
    session fixture on first use (the PostgreSQL cluster).
    """
    previous = socket.socket
    pytest_socket.enable_socket()
    try:
        yield
    finally:
        socket.socket = previous  # type: ignore[misc]


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto S3 server for the session; tests isolate themselves with their own bucket."""
    with _sockets_for_session_setup():
        server_cm = run_moto(tmp_path_factory.mktemp("moto") / "moto.log")
        server = server_cm.__enter__()
    try:
        yield server
    finally:
        server_cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the session (it takes seconds to start): a real S3 server that checks signatures,
    signed lengths and expiry, and enforces Object Lock. Tests isolate themselves with their own bucket."""
    with _sockets_for_session_setup():
        server_cm = run_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
        server = server_cm.__enter__()
    try:
        yield server
    finally:
        server_cm.__exit__(None, None, None)


@pytest.fixture
def moto_bucket(moto_server: S3Server) -> str:
    """A fresh bucket on the session's moto server."""
    return moto_server.create_bucket()


@pytest.fixture
def seaweedfs_bucket(seaweedfs_server: S3Server) -> str:
    """A fresh bucket on the session's SeaweedFS."""
    return seaweedfs_server.create_bucket()


@pytest.fixture
def seaweedfs_lock_bucket(seaweedfs_server: S3Server) -> str:
    """A fresh bucket with Object Lock (and so versioning) on the session's SeaweedFS."""
    return seaweedfs_server.create_bucket("lock", object_lock=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster for the session, started on first use; tests isolate themselves with a database each."""
    with _sockets_for_session_setup():
        cluster_cm = run_postgres()
        cluster = cluster_cm.__enter__()
    try:
        yield cluster
    finally:
        cluster_cm.__exit__(None, None, None)
