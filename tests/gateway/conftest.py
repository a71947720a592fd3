"""Fixtures of the gateway tests: a running gateway on moto, an HTTP session, an instance and its token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers.gateway import RunningGateway, run_gateway
from tests.helpers.servers import S3Server

PART = 5 * 1024 * 1024  # S3's minimum part size: moto holds objects in memory


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def gateway(moto_server: S3Server, moto_bucket: str, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    async with run_gateway(moto_server, moto_bucket, tmp_path, PART_SIZE=str(PART)) as running:
        yield running
