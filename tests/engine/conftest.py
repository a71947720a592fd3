"""Fixtures of the upload engine's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.engine.rig import Rig, make_rig
from tests.helpers.servers import S3Server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def rig(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[Rig]:
    """Real gateway (5 MiB parts) + fault proxy + moto."""
    async with make_rig(moto_server, moto_bucket, tmp_path, http) as made:
        yield made
