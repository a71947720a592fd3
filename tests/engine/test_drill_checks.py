"""The restore drill's checks on their own (no Home Assistant): archives made here, whole or damaged."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import AsyncIterator
from datetime import date

import pytest

from custom_components.offsite_backup.engine.drill import (
    READ_SIZE,
    ArchiveError,
    CheckedStream,
    DrillFailure,
    ExpectedContents,
    check_record,
    compare_with_record,
    describe,
    label,
    pick_backup,
    validate_archive,
    weekly_due,
)

EXPECTED = ExpectedContents.of(
    "abc123", homeassistant=True, addons=["core_ssh"], folders=["share", "addons/local"]
)


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def inner(compressed: bool = True, files: int = 3) -> bytes:
    data = tar_of([(f"data/file{i}.bin", random.randbytes(50_000)) for i in range(files)])
    return gzip.compress(data) if compressed else data


def metadata(slug: str = "abc123") -> bytes:
    return json.dumps({"slug": slug, "name": "Made here", "homeassistant": {"version": "2026.10.4"}}).encode()


def whole(**replace: bytes | None) -> list[tuple[str, bytes]]:
    members = {
        "./backup.json": metadata(),
        "./homeassistant.tar.gz": gzip.compress(
            tar_of([("data/a.bin", random.randbytes(50_000)), ("data/b.bin", random.randbytes(50_000))])
            + bytes(3 * READ_SIZE)  # past the end-of-archive blocks: read all the same, to gzip's trailer
        ),
        "./core_ssh.tar.gz": inner(),
        "./share.tar.gz": inner(),
        "./addons_local.tar": inner(compressed=False),
        "./supervisor.tar.gz": inner(),
        "./something_else.tar.gz": b"not promised by the description: left alone",
        "./notes.txt": b"not an archive",
    }
    for name, data in replace.items():
        if data is None:
            del members[f"./{name}"]
        else:
            members[f"./{name}"] = data
    return list(members.items())


class Reader:
    """A blocking stream that records how much each read asked for."""

    def __init__(self, data: bytes) -> None:
        self.file = io.BytesIO(data)
        self.asked: list[int] = []

    def read(self, n: int = -1, /) -> bytes:
        self.asked.append(n)
        return self.file.read(n)


def test_a_whole_archive_is_read_to_its_end() -> None:
    archive = tar_of(whole()) + bytes(3 * READ_SIZE)  # Home Assistant pads a decrypted stream
    reader = Reader(archive)
    report = validate_archive(reader, EXPECTED)
    assert sorted(report.archives) == [
        "addons_local.tar",
        "core_ssh.tar.gz",
        "homeassistant.tar.gz",
        "share.tar.gz",
        "supervisor.tar.gz",
    ]
    assert report.files == 14
    assert report.bytes == 14 * 50_000
    assert reader.file.tell() == len(archive), "read to the very end, padding included"
    assert all(0 < n <= READ_SIZE for n in reader.asked), "streamed in bounded reads, never read whole"


@pytest.mark.parametrize(
    ("members", "says"),
    [
        (whole(**{"backup.json": None}), "backup.json is missing"),
        (whole(**{"backup.json": metadata("another")}), "backup.json describes backup 'another', not abc123"),
        (whole(**{"backup.json": b"{not json"}), "backup.json is not valid JSON"),
        (whole(**{"backup.json": b"[1, 2]"}), "backup.json is not a JSON object"),
        (whole(**{"homeassistant.tar.gz": None}), "inner archive missing: homeassistant"),
        (
            [*whole(**{"backup.json": None}), ("./backup.json", b"x" * (16 << 20 | 1))],
            "backup.json is not a regular",
        ),
        (
            whole(**{"homeassistant.tar.gz": None, "addons_local.tar": None}),
            "inner archives missing: addons_local, homeassistant",
        ),
        (whole(**{"share.tar.gz": b"plain text, not gzip"}), "share.tar.gz is damaged: Not a gzipped file"),
        (whole(**{"addons_local.tar": b"x" * 700}), "addons_local.tar is damaged"),
    ],
)
def test_what_makes_an_archive_incomplete(members: list[tuple[str, bytes]], says: str) -> None:
    with pytest.raises(ArchiveError) as err:
        validate_archive(io.BytesIO(tar_of(members)), EXPECTED)
    assert says in str(err.value)


def test_gzip_checks_what_it_decompressed() -> None:
    good = inner()
    crc = bytearray(good)
    crc[-8] ^= 0xFF  # the CRC-32 in gzip's trailer: only reading to the end sees it
    with pytest.raises(ArchiveError, match=r"homeassistant.tar.gz is damaged: CRC check failed"):
        validate_archive(io.BytesIO(tar_of(whole(**{"homeassistant.tar.gz": bytes(crc)}))), EXPECTED)
    with pytest.raises(ArchiveError, match=r"homeassistant.tar.gz is damaged: Compressed file ended"):
        validate_archive(
            io.BytesIO(tar_of(whole(**{"homeassistant.tar.gz": good[: len(good) // 2]}))), EXPECTED
        )
    deflate = bytearray(good)
    deflate[len(deflate) // 2 : len(deflate) // 2 + 64] = bytes(64)
    with pytest.raises(ArchiveError, match=r"homeassistant.tar.gz is damaged"):
        validate_archive(io.BytesIO(tar_of(whole(**{"homeassistant.tar.gz": bytes(deflate)}))), EXPECTED)


def test_a_truncated_or_foreign_stream() -> None:
    archive = tar_of(whole())
    with pytest.raises(ArchiveError, match=r"is damaged: unexpected end of data"):
        validate_archive(io.BytesIO(archive[: len(archive) // 3]), EXPECTED)  # in an inner archive
    with pytest.raises(ArchiveError, match=r"the archive is damaged: unexpected end of data"):
        validate_archive(io.BytesIO(archive[:700]), EXPECTED)  # in backup.json's header
    with pytest.raises(ArchiveError, match=r"the archive is damaged"):
        validate_archive(io.BytesIO(random.randbytes(100_000)), EXPECTED)
    with pytest.raises(ArchiveError, match=r"the archive is damaged"):
        validate_archive(io.BytesIO(b""), EXPECTED)


def test_what_a_description_promises() -> None:
    assert ExpectedContents.of("x", homeassistant=False, addons=[], folders=["media"]).archives == {"media"}
    assert EXPECTED.archives == {"homeassistant", "core_ssh", "share", "addons_local"}


def test_the_record() -> None:
    check_record("Nightly", "abc", "00" * 32, recorded=True)
    with pytest.raises(DrillFailure, match=r"^The gateway has no record of backup Nightly \(abc\)$"):
        check_record("Nightly", "abc", None, recorded=False)
    with pytest.raises(DrillFailure, match=r"^The gateway recorded no SHA-256 for backup abc$"):
        check_record(None, "abc", None, recorded=True)
    assert label(None, "abc") == "abc"
    assert label("Nightly", "abc") == "Nightly (abc)"
    signed = "GET https://s3.example.com/bucket/key?X-Amz-Signature=secret failed"
    assert describe(RuntimeError(signed)) == "GET https://s3.example.com/bucket/key?… failed"
    assert describe(RuntimeError()) == "RuntimeError"


async def chunks(*parts: bytes | Exception) -> AsyncIterator[bytes]:
    for part in parts:
        if isinstance(part, Exception):
            raise part
        yield part


async def test_the_stream_is_counted_and_hashed_on_its_way() -> None:
    seen: list[int] = []
    stream = CheckedStream(chunks(b"abc", b"", b"defg"), seen.append)
    assert [chunk async for chunk in stream] == [b"abc", b"defg"], "an empty chunk would read as the end"
    assert stream.count == 7
    assert seen == [3, 7]
    assert stream.sha256 == hashlib.sha256(b"abcdefg").hexdigest()
    assert stream.ended
    assert stream.error is None
    assert [chunk async for chunk in stream] == [], "the end stays the end"
    digest = hashlib.sha256(b"abcdefg").hexdigest()
    assert compare_with_record("N", "i", stream, 7, digest.upper()) is None


async def test_a_broken_download_ends_the_stream_and_is_kept() -> None:
    stream = CheckedStream(chunks(b"abc", ConnectionResetError("reset by peer"), b"never"))
    assert await anext(stream) == b"abc"
    await stream.drain()
    assert isinstance(stream.error, ConnectionResetError)
    assert stream.count == 3
    message = compare_with_record("Nightly", "abc", stream, 10, "00" * 32)
    assert message == "The download of backup Nightly (abc) broke off after 3 of 10 bytes: reset by peer"


async def test_what_storage_sent_against_the_record() -> None:
    stream = CheckedStream(chunks(b"abcdefg"))
    await stream.drain()
    digest = hashlib.sha256(b"abcdefg").hexdigest()
    assert compare_with_record(None, "i", stream, 9, digest) == (
        "Backup i is truncated: storage sent 7 bytes of the 9 the gateway recorded"
    )
    assert compare_with_record(None, "i", stream, 5, digest) == (
        "Backup i has changed size: storage sent 7 bytes, the gateway recorded 5"
    )
    changed = compare_with_record(None, "i", stream, 7, "ab" * 32)
    assert changed == (
        f"Backup i was changed after it was uploaded: the SHA-256 of what storage holds is {digest}, "
        f"the gateway recorded {'ab' * 32}"
    )


def test_when_a_weekly_drill_is_due() -> None:
    today = date(2026, 6, 8)
    assert weekly_due(today, None, last_failed=False), "never verified"
    assert weekly_due(today, date(2026, 6, 7), last_failed=True), "the last drill failed: again tonight"
    assert not weekly_due(today, date(2026, 6, 2), last_failed=False), "6 days"
    assert weekly_due(today, date(2026, 6, 1), last_failed=False), "a calendar week, whatever the hour"
    assert weekly_due(today, date(2027, 6, 8), last_failed=False), "verified 'in a year': the clock was ahead"


def test_which_backup_a_weekly_drill_tests() -> None:
    rng = random.Random(7)
    week_4 = date(2026, 1, 19)  # ISO week 4
    week_5 = date(2026, 1, 26)
    assert week_4.isocalendar().week == 4
    assert pick_backup("newest", ["a", "b", "c"], week_5, rng) == "newest"
    assert pick_backup("newest", [], week_4, rng) == "newest", "no older one to choose"
    picks = {pick_backup("newest", ["a", "b", "c"], week_4, rng) for _ in range(200)}
    assert picks == {"a", "b", "c"}, "uniformly among the older ones"
