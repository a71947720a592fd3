"""The demo's backup: `offsite_backup.create_backup` with its progress on the console, then the proof that the
object in the bucket, the gateway's record and a download through Home Assistant are the same bytes, and the usage
sensors that say what the gateway holds."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from typing import Any

from offsite_demo.console import DemoError, elapsed, mib, say
from offsite_demo.homeassistant import HomeAssistantApi, Websocket
from offsite_demo.settings import BUCKET, DEMO_POLICY
from offsite_demo.state import Demo

BUSY = ("creating", "uploading")  # the status sensor's states while a backup runs


async def back_up(
    demo: Demo, api: HomeAssistantApi, ws: Websocket, entities: dict[str, str]
) -> tuple[str, int] | None:
    """Call offsite_backup.create_backup and print the progress sensor while it runs: (backup id, size)."""
    progress_id, status_id = entities.get("progress"), entities.get("status")
    tty = sys.stdout.isatty()
    shown: dict[str, str] = {}

    def on_state(event: dict[str, Any]) -> None:
        data = event["data"]
        entity_id = data.get("entity_id")
        new = data.get("new_state") or {}
        if entity_id not in (progress_id, status_id) or "state" not in new:
            return
        if shown.get(entity_id) == new["state"]:
            return
        shown[entity_id] = new["state"]
        if entity_id == status_id:
            if tty:
                print(file=sys.stdout)
            say(f"status: {new['state']}")
            return
        try:
            percent = float(new["state"])
        except ValueError:
            say(f"progress: {new['state']}")
            return
        bar = "#" * int(percent / 4)
        line = f"progress {percent:5.1f} % [{bar:<25}] (sensor {progress_id})"
        if tty:
            print(f"\r[demo {elapsed():6.1f}s] {line}", end="", flush=True)
        else:
            say(line)

    await ws.subscribe("state_changed", on_state)
    say(f"calling offsite_backup.create_backup (config_entry_id {demo.entry_id}) through the REST API")
    started = time.monotonic()
    try:
        answer = await _create_backup(demo, api, entities)
    except DemoError as err:
        demo.result.check(f"offsite_backup.create_backup succeeded ({err})", ok=False)
        return None
    finally:
        if tty:
            print(flush=True)
    response = answer.get("service_response") or {}
    backup_id, size = response.get("backup_id"), response.get("size")
    ok = isinstance(backup_id, str) and isinstance(size, int)
    demo.result.check(
        f"offsite_backup.create_backup returned backup id {backup_id}, size {size} bytes "
        f"({mib(size)}) in {time.monotonic() - started:.1f} s",
        ok,
    )
    if not isinstance(backup_id, str) or not isinstance(size, int):
        return None
    return backup_id, size


async def _create_backup(demo: Demo, api: HomeAssistantApi, entities: dict[str, str]) -> Any:
    """The action call; once more if the nightly backup started first (the demo may run inside its window).

    The REST API answers a failed action with a bare 500: the reason is read from the entry's sensors.
    """
    status_id, error_id = entities.get("status"), entities.get("last_error")
    for attempt in range(2):
        try:
            return await api.request(
                "POST",
                "/api/services/offsite_backup/create_backup?return_response",
                {"config_entry_id": demo.entry_id},
            )
        except DemoError as err:
            status = await api.state(status_id)
            if attempt or status not in BUSY:
                reason = await api.state(error_id)
                raise DemoError(f"{err}; the entry's status: {status}, its last error: {reason}") from None
        say("another backup (the nightly one: the demo runs inside its window) started first: waiting for it")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if await api.state(status_id) not in BUSY:
                break
            await asyncio.sleep(1)
    raise AssertionError("unreachable")  # pragma: no cover


async def verify(demo: Demo, api: HomeAssistantApi, ws: Websocket, backup_id: str, size: int) -> None:
    """The object in the bucket, the gateway's record and Home Assistant's download agree; it is encrypted."""
    async with api.session.get(
        f"{demo.gateway_url}/v1/backups", headers={"Authorization": f"Bearer {demo.token}"}
    ) as answer:
        remote = [
            b
            for b in (await answer.json())["backups"]
            if (b.get("metadata") or {}).get("backup_id") == backup_id
        ]
    if not demo.result.check(f"the gateway lists backup {backup_id}", len(remote) == 1):
        return
    record = remote[0]
    key = f"{demo.instance_id}/{record['id']}"
    head, object_sha = await asyncio.to_thread(_object, demo, key)
    object_size = int(head["ContentLength"])
    demo.result.check(
        f"object in the bucket: s3://{BUCKET}/{key}, {object_size} bytes in {record['part_count']} parts "
        f"of {mib(record['part_size'])}",
        object_size == size and record["part_count"] >= 2,
    )
    digest = hashlib.sha256()
    downloaded = 0
    url = f"{demo.ha_url}/api/backup/download/{backup_id}?agent_id={demo.agent_id}"
    async with api.session.get(url, headers=api.headers) as answer:
        if answer.status != 200:
            demo.result.check(
                f"download through Home Assistant's backup API (HTTP {answer.status})", ok=False
            )
            return
        async for chunk in answer.content.iter_chunked(1 << 20):
            digest.update(chunk)
            downloaded += len(chunk)
    download_sha = digest.hexdigest()
    demo.result.check(
        f"downloaded through Home Assistant's backup API (GET /api/backup/download/{backup_id}"
        f"?agent_id={demo.agent_id}): {downloaded} bytes",
        downloaded == size,
    )
    say(f"  SHA-256 of the object in the bucket:         {object_sha}")
    say(f"  SHA-256 of the download from Home Assistant: {download_sha}")
    say(f"  SHA-256 the gateway recorded at complete:    {record.get('sha256')}")
    same = object_sha == download_sha == record.get("sha256")
    demo.result.check(
        f"SHA-256 match: {download_sha}" if same else "SHA-256 mismatch between the bucket and the download",
        same,
    )
    details = await ws.call("backup/details", backup_id=backup_id)
    agent = ((details.get("backup") or {}).get("agents") or {}).get(demo.agent_id) or {}
    demo.result.check(
        f"the backup is encrypted with Home Assistant's backup key (protected: {agent.get('protected')})",
        agent.get("protected") is True,
    )


def _object(demo: Demo, key: str) -> tuple[dict[str, Any], str]:
    """The object's HEAD and the SHA-256 of its bytes, read from the bucket."""
    client = demo.s3.client()
    head: dict[str, Any] = client.head_object(Bucket=BUCKET, Key=key)
    digest = hashlib.sha256()
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
    for chunk in body.iter_chunks(1 << 20):
        digest.update(chunk)
    return head, digest.hexdigest()


async def show_usage(demo: Demo, api: HomeAssistantApi, entities: dict[str, str], size: int) -> None:
    """The usage sensors, as the gateway reported them after the backup (refreshed after each job)."""
    keys = ("storage_used", "backups_stored", "quota_used")
    states: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while True:
        for key in keys:
            entity_id = entities.get(key)
            states[key] = await api.request("GET", f"/api/states/{entity_id}") if entity_id else {}
        if states["backups_stored"].get("state") == "1" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    for key in keys:
        state = states[key]
        unit = (state.get("attributes") or {}).get("unit_of_measurement") or ""
        say(f"  {entities.get(key)}: {state.get('state')} {unit}".rstrip())
    try:
        used = float(states["storage_used"]["state"])
        count = int(states["backups_stored"]["state"])
        share = float(states["quota_used"]["state"])
    except (KeyError, TypeError, ValueError):
        demo.result.check("the usage sensors show numbers", ok=False)
        return
    scale = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}.get(
        (states["storage_used"].get("attributes") or {}).get("unit_of_measurement", ""), 0
    )
    demo.result.check(
        f"Storage used {used} ({mib(int(used * scale))}), Backups stored {count}, Quota used {share} % of "
        f"{DEMO_POLICY[1]}: what the gateway holds",
        count == 1 and abs(used * scale - size) < 1024 * 1024 and 0 < share < 100,
    )
