"""The watchdog on the command line (issue 22): `instance set --expect-every`, `instance list`'s state and alerts
(never a notify URL's path or query), and `offsite-gateway report` (and `--json`, `--problems`)."""

from __future__ import annotations

import json
import time

from offsite_gateway import auth
from offsite_gateway.config import load_settings
from offsite_gateway.store import COMPLETED, Backup, Instance, NotifyTarget, create_store
from tests.gateway.test_cli import _env, run
from tests.gateway.watching import DAY, HOUR
from tests.helpers.gateway import GatewayDatabase

GIB = 1024**3
SECRET_URL = "https://ntfy.example.net/backups-of-grandma-x7Qp?auth=tk_s3cr3t"


async def _houses(database: GatewayDatabase) -> None:
    """grandma: late two days (her notify URL set); cabin: never backed up, created three days ago; home: ok, near
    its quota; new: created now; gone: revoked."""
    store = create_store(load_settings({"OFFSITE_GATEWAY_DB": database.setting}, require_storage=False))
    await store.open()
    now = time.time()
    try:
        for instance, backups in (
            (Instance("a" * 32, "grandma", now - 30 * DAY), [(3 * GIB, now - 36 * HOUR - 2 * DAY)]),
            (Instance("b" * 32, "cabin", now - 3 * DAY), []),
            (Instance("c" * 32, "home", now - 10 * DAY), [(GIB, now - 2 * DAY), (GIB, now - HOUR)]),
            (Instance("d" * 32, "gone", now - 10 * DAY, revoked_at=now - DAY), []),
        ):
            assert await store.restore_instance(instance, auth.hash_token(auth.new_token()))
            for number, (size, completed) in enumerate(backups):
                backup_id = f"{instance.id[:30]}{number:02d}"
                assert await store.restore_backup(
                    Backup(
                        backup_id,
                        instance.id,
                        "nightly",
                        size,
                        None,
                        COMPLETED,
                        completed - 60,
                        completed,
                        5 * 1024 * 1024,
                        1,
                        f"{instance.id}/{backup_id}",
                    )
                )
        await auth.add_instance(store, "new")
        assert await store.set_policy("home", {"quota_bytes": 2 * GIB + GIB // 10})
        assert await store.set_notify("a" * 32, NotifyTarget(SECRET_URL, "ntfy", "signing-key"))
    finally:
        await store.close()


def _name(row: str) -> str:
    return next(name for name in ("grandma", "cabin", "home", "new") if f"  {name}  " in row)


async def test_expect_every_and_the_list(database: GatewayDatabase) -> None:
    env = _env(DB=database.setting)
    await _houses(database)
    out = run("instance", "set", "home", "--expect-every", "2d", env=env).stdout
    assert "expect-every=2d*" in out
    listed = run("instance", "list", env=env).stdout
    lines = {line.split()[1]: line for line in listed.splitlines()[1:]}
    assert "STATE" in listed.splitlines()[0]
    assert "ALERTS" in listed.splitlines()[0]
    assert " late 2d " in lines["grandma"]
    assert " never 36h " in lines["cabin"]
    assert " ok " in lines["home"]
    assert " ok " in lines["new"]
    assert "expect-every=2d*" in lines["home"]
    assert "expect-every=36h " in lines["grandma"] + " "
    assert "ntfy https://ntfy.example.net/…" in lines["grandma"]
    assert "backups-of-grandma" not in listed
    assert "tk_s3cr3t" not in listed

    assert "expect-every=off*" in run("instance", "set", "cabin", "--expect-every", "off", env=env).stdout
    assert " paused " in run("instance", "list", env=env).stdout
    assert "expect-every=36h" in run("instance", "set", "cabin", "--expect-every", "default", env=env).stdout
    for bad in ("soon", "-3h", "0.5h", "400d"):
        refused = run("instance", "set", "home", "--expect-every", bad, env=env, check=False)
        assert refused.returncode == 2, bad
        assert "--expect-every" in refused.stderr
    settings_error = run("instance", "list", env=_env(DB=database.setting, EXPECT_EVERY="later"), check=False)
    assert settings_error.returncode == 2
    assert "OFFSITE_GATEWAY_EXPECT_EVERY" in settings_error.stderr


async def test_the_report(database: GatewayDatabase) -> None:
    env = _env(DB=database.setting)
    await _houses(database)
    text = run("report", env=env).stdout
    head, blank, *table = text.splitlines()
    assert head.startswith("Offsite gateway, ")
    assert (
        "4 instance(s): 2 ok, 1 late, 1 never backed up, 0 paused; 1 near their quota; 5.0 GiB in 3 backup(s)."
        in head
    )
    assert blank == ""
    assert table[0].split() == ["STATE", "NAME", "LAST", "SUCCESS", "DUE", "BY", "USED", "QUOTA"]
    assert [_name(row) for row in table[1:]] == [
        "grandma",
        "cabin",
        "home",
        "new",
    ]  # the longest late first, then near the quota
    assert table[1].startswith("late 2d ")
    assert table[2].startswith("never 36h ")
    assert "2.0 GiB" in table[3]
    assert "(95%)" in table[3]
    assert "gone" not in text
    assert "backups-of-grandma" not in text

    problems = run("report", "--problems", env=env).stdout
    assert [_name(row) for row in problems.splitlines()[3:]] == ["grandma", "cabin", "home"]

    document = json.loads(run("report", "--json", env=env).stdout)
    assert document["summary"] == {
        "instances": 4,
        "ok": 2,
        "late": 1,
        "never": 1,
        "paused": 0,
        "near_quota": 1,
        "bytes": 5 * GIB,
        "backups": 3,
    }
    grandma, cabin, home, new = document["instances"]
    assert (grandma["name"], grandma["state"], grandma["owner_alerts"]) == ("grandma", "late", True)
    assert abs(grandma["late_for"] - 2 * DAY) < 120
    assert grandma["bytes"] == 3 * GIB
    assert (cabin["state"], cabin["last_success_at"], cabin["backups"]) == ("never", None, 0)
    assert (home["quota_bytes"], home["quota_used"]) == (2 * GIB + GIB // 10, 0.9524)
    assert (new["state"], new["late_for"], new["expect_every"]) == ("ok", None, 36 * HOUR)
    assert "tk_s3cr3t" not in json.dumps(document)
    only = json.loads(run("report", "--json", "--problems", env=env).stdout)
    assert [line["name"] for line in only["instances"]] == ["grandma", "cabin", "home"]
