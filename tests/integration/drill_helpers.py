"""Helpers of the restore drill's tests."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest.mock import patch

from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.core import Event, HomeAssistant
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_capture_events

from custom_components.offsite_backup.backup import OffsiteBackupAgent
from custom_components.offsite_backup.const import (
    DOMAIN,
    EVENT_DRILL_FAILED,
    EVENT_DRILL_SUCCEEDED,
    ISSUE_DRILL_FAILED,
)
from tests.helpers.servers import S3Server
from tests.integration.common import backup_now, objects, state

__all__ = ["backup_now"]  # the drill tests take it from here with the other helpers

ANOTHER_KEY = "a key this Home Assistant never had"


async def verify(hass: HomeAssistant, entry: MockConfigEntry, **data: Any) -> dict[str, Any]:
    response = await hass.services.async_call(
        DOMAIN,
        "verify_backup",
        {"config_entry_id": entry.entry_id, **data},
        blocking=True,
        return_response=True,
    )
    await hass.async_block_till_done()
    assert isinstance(response, dict)
    return response


async def name_of(hass: HomeAssistant, entry: MockConfigEntry, backup_id: str) -> str:
    agent = hass.data[DATA_MANAGER].backup_agents[f"{DOMAIN}.{entry.unique_id}"]
    return str((await agent.async_get_backup(backup_id)).name)


def the_object(s3: S3Server, bucket: str) -> tuple[str, bytes]:
    (key, data), *others = objects(s3, bucket).items()
    assert not others
    return key, data


def put_object(s3: S3Server, bucket: str, key: str, data: bytes) -> None:
    s3.client().put_object(Bucket=bucket, Key=key, Body=data)


def drill_events(hass: HomeAssistant) -> tuple[list[Event], list[Event]]:
    """The drill events fired from now on: (succeeded, failed)."""
    return async_capture_events(hass, EVENT_DRILL_SUCCEEDED), async_capture_events(hass, EVENT_DRILL_FAILED)


def with_data(config_dir: Path) -> bytes:
    """3 MiB of random data in the configuration (it does not compress: the backup is about as large)."""
    data = os.urandom(3 * 1024 * 1024)
    (config_dir / "marker.bin").write_bytes(data)
    return data


def issue(hass: HomeAssistant, entry: MockConfigEntry) -> ir.IssueEntry | None:
    return ir.async_get(hass).async_get_issue(DOMAIN, f"{ISSUE_DRILL_FAILED}_{entry.entry_id}")


def assert_failed(
    hass: HomeAssistant,
    entry: MockConfigEntry,
    response: dict[str, Any],
    failed: list[Event],
    *,
    backup_id: str,
    name: str,
    says: str,
) -> str:
    """The drill failed for the reason ``says``, naming the backup: response, sensor, event, Repairs."""
    error = response["error"]
    assert response["ok"] is False
    assert response["backup_id"] == backup_id
    assert isinstance(error, str)
    assert says in error, error
    assert f"{name} ({backup_id})" in error, "the message names the backup"
    assert state(hass, entry, "status") == "verify_failed"
    assert failed[-1].data["backup_id"] == backup_id
    assert failed[-1].data["backup_name"] == name
    assert failed[-1].data["error"] == error
    assert failed[-1].data["config_entry_id"] == entry.entry_id
    found = issue(hass, entry)
    assert found is not None
    assert found.severity is ir.IssueSeverity.ERROR
    assert found.translation_key == ISSUE_DRILL_FAILED
    assert found.translation_placeholders == {
        "title": entry.title,
        "backup_name": name,
        "backup_id": backup_id,
        "error": error,
    }
    return error


class Held:
    """A download whose first chunk passes and the rest waits for ``release`` (or raises ``error`` at once)."""

    def __init__(self, stream: Any, release: asyncio.Event, error: Exception | None) -> None:
        self._stream = stream
        self._release = release
        self._error = error
        self._first = True

    def __aiter__(self) -> Held:
        return self

    async def __anext__(self) -> bytes:
        if self._error is not None:
            raise self._error
        chunk: bytes = await anext(self._stream)
        if not self._first:
            await self._release.wait()
        self._first = False
        return chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


@contextmanager
def held_downloads(error: Exception | None = None) -> Iterator[asyncio.Event]:
    """Downloads through the location stop after their first chunk until the event is set."""
    release = asyncio.Event()
    original = OffsiteBackupAgent.async_download_backup

    async def download(self: OffsiteBackupAgent, backup_id: str, **kwargs: Any) -> Held:
        return Held(await original(self, backup_id, **kwargs), release, error)

    with patch.object(OffsiteBackupAgent, "async_download_backup", download):
        yield release
