"""What the engine refuses up front, and a saved state that no longer fits."""

from __future__ import annotations

import pytest

from custom_components.offsite_backup.engine.uploader import UploadOptions, UploadState, upload
from tests.engine.rig import PART, Rig, Source, make_data


@pytest.mark.parametrize(
    "kwargs",
    [
        {"parallel": 0},
        {"max_tries": 0},
        {"bandwidth_limit": 0},
        {"timeout_base": 0},
        {"timeout_min_rate": -1},
    ],
)
def test_nonsense_options_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        UploadOptions(**kwargs)  # type: ignore[arg-type]


async def test_an_empty_stream_is_refused(rig: Rig) -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        await upload(client=rig.client, open_stream=Source(b"").open, size=0, name="n", metadata={})


async def test_a_saved_state_of_another_size_is_aborted_and_a_new_upload_made(rig: Rig) -> None:
    old = make_data(PART + 10, seed=1)
    init = await rig.client.create_backup(name="old", size=len(old))
    saved = UploadState(
        backup_id=init.id,
        size=len(old),
        part_size=init.part_size,
        part_count=init.part_count,
        url_ttl=init.url_ttl,
    )
    new = make_data(PART + 99, seed=2)
    result = await upload(
        client=rig.client, open_stream=Source(new).open, size=len(new), name="new", metadata={}, state=saved
    )
    assert result.id != init.id
    assert (await rig.client.get_backup(init.id)).status == "failed"
    assert rig.multipart_uploads() == []
    assert await rig.downloaded_sha256(result.id) == Source(new).sha256
