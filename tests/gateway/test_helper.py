"""tests/helpers/gateway.py works inside Home Assistant's harness: other suites run a gateway next to `hass`."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from homeassistant.core import HomeAssistant
from homeassistant.helpers.aiohttp_client import async_get_clientsession

from tests.helpers.gateway import GatewayDatabase, run_gateway
from tests.helpers.servers import S3Server


async def test_gateway_next_to_home_assistant(
    hass: HomeAssistant, moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase
) -> None:
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, PART_SIZE="5242880", URL_TTL="60"
    ) as gateway:
        assert gateway.settings.url_ttl == 60
        instance_id, token = await gateway.add_instance("home")
        session = async_get_clientsession(hass)
        async with session.get(
            f"{gateway.url}/v1/instance", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["id"] == instance_id
        assert body["limits"]["part_size"] == 5242880
        await gateway.revoke_instance("home")
        async with session.get(
            f"{gateway.url}/v1/instance", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 401
        await gateway.run_sweeper_once()


async def test_restart_keeps_the_database(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase
) -> None:
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, SWEEP_INTERVAL="1"
    ) as gateway:
        _, token = await gateway.add_instance("home")
    async with (
        run_gateway(moto_server, moto_bucket, tmp_path, database=database) as gateway,
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.url}/v1/instance", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        assert resp.status == 200
