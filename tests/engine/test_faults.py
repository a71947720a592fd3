"""Faults between the uploader and storage, injected by the proxy: retried where they should be, fatal otherwise."""

from __future__ import annotations

from dataclasses import replace

import pytest

from custom_components.offsite_backup.engine.api import GatewayClient
from custom_components.offsite_backup.engine.uploader import UploadError, UploadOptions, upload
from tests.engine.proxy import FaultProxy, corrupt, expired, reset, stall, status
from tests.engine.rig import MIB, PART, Rig, Source, VirtualClock, make_data

# tiny backoff delays; a per-attempt timeout of about 2 s (5 MiB parts go through in well under that)
FAULTY = UploadOptions(retry_base=0.01, retry_cap=0.05, timeout_base=2.0, timeout_min_rate=1 << 30)


async def test_upload_survives_every_transient_fault_with_every_byte_intact(rig: Rig) -> None:
    size = 4 * PART + MIB  # 5 parts
    source = Source(make_data(size, seed=21))
    proxy = rig.proxy
    proxy.fail(1, reset(), status(500, "InternalError"))
    proxy.fail(2, status(503, "SlowDown", "Please reduce your request rate."), stall(30))
    proxy.fail(3, status(429, "TooManyRequests", retry_after="1"))
    proxy.fail(4, expired())
    proxy.fail(5, corrupt())

    backup = await upload(
        client=rig.client, open_stream=source.open, size=size, name="b", metadata={}, options=FAULTY
    )

    assert await rig.downloaded_sha256(backup.id) == source.sha256
    assert backup.sha256 == source.sha256
    # every fault was met once...
    assert proxy.faults_met == {
        "reset": 1,
        "status:500": 1,
        "status:503": 1,
        "stall": 1,
        "status:429": 1,
        "status:403": 1,
        "corrupt": 1,
    }
    # ...and each part was sent once more than it met faults; storage acknowledged each (the corrupted one twice)
    assert dict(proxy.puts) == {1: 3, 2: 3, 3: 2, 4: 2, 5: 2}
    assert dict(proxy.stored) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 2}
    assert not any(proxy.plan.values())
    # the 429's Retry-After of 1 s was honoured (backoff alone would be under 0.05 s)
    first, second = proxy.put_times[3]
    assert second - first >= 0.95
    # the 403 made the engine sign part 4 again; the other faults did not need new URLs
    assert rig.client.signed[4] == 2
    assert all(rig.client.signed[n] == 1 for n in (1, 2, 3, 5))
    assert rig.multipart_uploads() == []


async def test_a_failure_that_outlasts_the_patience_aborts_and_says_what_happened(rig: Rig) -> None:
    """Without a deadline, a transient failure is retried for ``patience`` seconds (simulated here)."""
    size = 2 * PART + 10
    rig.proxy.fail(2, *[status(500, "InternalError", "We encountered an internal error.")] * 1000)
    source = Source(make_data(size, seed=22))
    clock = VirtualClock()

    with pytest.raises(UploadError) as caught:
        await upload(
            client=rig.client,
            open_stream=source.open,
            size=size,
            name="b",
            metadata={},
            options=replace(FAULTY, retry_base=10, retry_cap=60, patience=300),
            clock=clock.clock,
        )

    err = caught.value
    tries = rig.proxy.puts[2]
    assert (err.part_number, err.status, err.storage_code, err.tries) == (2, 500, "InternalError", tries)
    assert tries > 2
    assert "part 2 of 3" in err.message
    assert f"after {tries} tries in 5 min" in err.message, err.message
    assert "HTTP 500 InternalError" in err.message
    assert 300 <= clock.elapsed < 301, "the last try is at the end of the patience, not later"
    # aborted: no multipart upload left in storage, the backup is failed, nothing listed
    assert rig.multipart_uploads() == []
    assert err.backup_id is not None
    assert (await rig.client.get_backup(err.backup_id)).status == "failed"
    assert await rig.client.list_backups() == []


async def test_other_4xx_fails_at_once(rig: Rig) -> None:
    size = 2 * PART
    rig.proxy.fail(1, status(400, "InvalidArgument", "Part number must be an integer"))
    source = Source(make_data(size, seed=23))

    with pytest.raises(UploadError) as caught:
        await upload(
            client=rig.client, open_stream=source.open, size=size, name="b", metadata={}, options=FAULTY
        )

    err = caught.value
    assert (err.part_number, err.status, err.storage_code, err.tries) == (1, 400, "InvalidArgument", 1)
    assert "will not pass by retrying" in err.message
    assert rig.proxy.puts[1] == 1
    assert rig.multipart_uploads() == []


async def test_timeouts_until_the_last_try_fail_with_a_timeout_message(rig: Rig) -> None:
    size = PART + 1
    rig.proxy.fail(1, *[stall(30)] * 100)
    options = UploadOptions(patience=2, retry_base=1, retry_cap=1, timeout_base=0.5, timeout_min_rate=1 << 30)
    with pytest.raises(UploadError) as caught:
        await upload(
            client=rig.client,
            open_stream=Source(make_data(size)).open,
            size=size,
            name="b",
            metadata={},
            options=options,
            clock=VirtualClock().clock,
        )
    err = caught.value
    assert (err.part_number, err.status, err.tries) == (1, None, rig.proxy.puts[1])
    assert err.tries is not None
    assert err.tries >= 2
    assert "no answer from storage within 1 s" in err.message
    assert rig.multipart_uploads() == []


async def test_s3_request_timeout_is_retried(rig: Rig) -> None:
    """S3's 400 RequestTimeout ("your socket connection was not read from in time") passes by trying again."""
    size = PART + 10
    rig.proxy.fail(1, status(400, "RequestTimeout", "Your socket connection to the server was not read from"))
    source = Source(make_data(size, seed=24))
    backup = await upload(
        client=rig.client, open_stream=source.open, size=size, name="b", metadata={}, options=FAULTY
    )
    assert backup.sha256 == source.sha256
    assert rig.proxy.puts[1] == 2
    assert rig.proxy.faults_met == {"status:400": 1}


async def test_a_gateway_failing_to_create_the_upload_is_asked_again(rig: Rig) -> None:
    """One 502 from the gateway (a restarting node behind its proxy) must not lose the night's backup."""
    size = PART + 10
    async with FaultProxy(rig.gateway.url) as front:  # between the client and the gateway
        front.fail_other("POST", 502)  # the first two POSTs: both tries of POST /v1/backups
        front.fail_other("POST", 503)
        client = GatewayClient(rig.http, front.url, rig.token)
        backup = await upload(
            client=client,
            open_stream=Source(make_data(size, seed=25)).open,
            size=size,
            name="b",
            metadata={},
            options=FAULTY,
        )
        assert front.other_faults == {"POST": []}
    assert backup.status == "completed"
    assert [b.id for b in await rig.client.list_backups()] == [backup.id]
