"""Fixtures of the gateway tests: a running gateway on moto, an HTTP session, an instance and its token.

Every test that asks for `database` (or `gateway`, which does) runs once per store: SQLite and PostgreSQL, each
test with a database of its own. OFFSITE_TEST_STORES limits the stores (`sqlite`, `postgresql`, comma-separated;
both by default): `OFFSITE_TEST_STORES=sqlite` needs no PostgreSQL binaries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers.gateway import GatewayDatabase, RunningGateway, database_in, run_gateway, selected_stores
from tests.helpers.servers import S3Server

PART = 5 * 1024 * 1024  # S3's minimum part size: moto holds objects in memory


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store" in metafunc.fixturenames:
        metafunc.parametrize("store", selected_stores())


@pytest.fixture
def database(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[GatewayDatabase]:
    """A database of this test's own, in the store under test."""
    with database_in(store, tmp_path, request) as database:
        yield database


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def gateway(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase
) -> AsyncIterator[RunningGateway]:
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, PART_SIZE=str(PART)
    ) as running:
        yield running
