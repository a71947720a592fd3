"""`offsite-gateway bucket check` and `bucket create`, and `serve`'s start-up check, run as the operator runs them
(the command as a subprocess), against SeaweedFS: a bucket with Object Lock, a plain one, a versioned one with
lifecycle rules and default retentions, a missing one, wrong and narrow credentials, storage that does not
answer; what SeaweedFS cannot play (storage without Object Lock, AWS's region check) through the proxy of
tests/helpers/s3proxy.py; and moto for the call shapes of another implementation."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helpers.cli import cli_env, run_cli, run_cli_async
from tests.helpers.s3proxy import S3Proxy
from tests.helpers.servers import SEAWEEDFS_NO_ADMIN, SEAWEEDFS_READ_ONLY, S3Server, free_port

PROBE = "offsite-gateway-check/"


def _lines(output: str) -> dict[str, str]:
    """The report's findings by topic: `word: text` (each finding's lines joined again); the verdict's too."""
    found: dict[str, str] = {}
    current = ""
    for line in output.splitlines():
        match = re.match(r"^  (ok|note|warning|cannot work) +([^:]+): (.*)$", line)
        if match:
            word, topic, text = match.groups()
            current = topic
            found[topic] = (found[topic] + " | " if topic in found else "") + f"{word}: {text}"
        elif line.startswith("               ") and current:
            found[current] += " " + line.strip()
        elif line.startswith("Verdict: "):
            found["verdict"] = line.removeprefix("Verdict: ")
    return found


def _empty(s3: S3Server, bucket: str) -> None:
    """Nothing in the bucket: no object, version, delete marker or upload (the check cleaned up after itself)."""
    client = s3.client()
    versions = client.list_object_versions(Bucket=bucket)
    assert versions.get("Versions", []) == versions.get("DeleteMarkers", []) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def _check(s3: S3Server, bucket: str, tmp_path: Path, **settings: str) -> tuple[int, dict[str, str], str]:
    result = run_cli("bucket", "check", env=cli_env(s3, bucket, tmp_path, **settings), check=False)
    output = result.stdout + result.stderr
    assert s3.secret_key not in output
    return result.returncode, _lines(result.stdout), output


def test_a_bucket_the_gateway_created_with_object_lock(seaweedfs_server: S3Server, tmp_path: Path) -> None:
    bucket = f"check-lock-{uuid.uuid4().hex[:8]}"
    env = cli_env(seaweedfs_server, bucket, tmp_path, OBJECT_LOCK="true", PROTECT_DAYS="3")
    assert "created, with Object Lock" in run_cli("bucket", "create", env=env).stdout
    assert "already exists, with Object Lock" in run_cli("bucket", "create", env=env).stdout
    code, found, output = _check(seaweedfs_server, bucket, tmp_path, OBJECT_LOCK="true", PROTECT_DAYS="3")
    assert code == 0, output
    assert f"Bucket {bucket!r} at {seaweedfs_server.endpoint}" in output
    assert found["storage"].startswith("ok: ")
    assert found["versioning"] == "ok: on, as Object Lock needs it"
    assert found["Object Lock"].startswith("ok: enabled: each completed backup")
    assert found["lifecycle"].startswith("note: no rule aborts incomplete multipart uploads")
    assert found["uploads"].startswith(
        "ok: a multipart upload was begun, a part PUT through its presigned URL"
    )
    assert (
        found["objects"]
        == "ok: an object was written, read, listed, locked for 60 s, deleted with every version"
    )
    assert found["verdict"] == "usable with these settings."
    _empty(seaweedfs_server, bucket)
    # OBJECT_LOCK off on that bucket: it works, but deletes would leave versions behind.
    code, found, output = _check(seaweedfs_server, bucket, tmp_path)
    assert code == 0, output
    assert found["Object Lock"].startswith(
        "warning: enabled on the bucket, but OFFSITE_GATEWAY_OBJECT_LOCK is off"
    )
    assert "set OFFSITE_GATEWAY_OBJECT_LOCK=true" in found["Object Lock"]
    assert found["verdict"] == "usable with these settings, 1 warning(s) above."
    # PROTECT_DAYS 0: nothing is locked unless an instance has its own.
    code, found, output = _check(seaweedfs_server, bucket, tmp_path, OBJECT_LOCK="true")
    assert code == 0, output
    assert "note: OFFSITE_GATEWAY_PROTECT_DAYS is 0" in found["Object Lock"]
    _empty(seaweedfs_server, bucket)


def test_object_lock_on_a_bucket_created_without_it(
    seaweedfs_server: S3Server, seaweedfs_bucket: str, tmp_path: Path
) -> None:
    """Object Lock can only be enabled when a bucket is created (on most providers): `bucket create` does not
    say "already exists" and `bucket check` says it cannot work, both with the fix."""
    env = cli_env(seaweedfs_server, seaweedfs_bucket, tmp_path, OBJECT_LOCK="true")
    created = run_cli("bucket", "create", env=env, check=False)
    assert created.returncode == 1
    assert f"bucket {seaweedfs_bucket!r} already exists without Object Lock" in created.stderr
    assert "Object Lock can only be enabled when a bucket is created on most providers" in created.stderr
    assert "`offsite-gateway bucket create`" in created.stderr
    assert "OFFSITE_GATEWAY_OBJECT_LOCK=false" in created.stderr
    code, found, output = _check(seaweedfs_server, seaweedfs_bucket, tmp_path, OBJECT_LOCK="true")
    assert code == 1, output
    assert found["Object Lock"].startswith("cannot work: OFFSITE_GATEWAY_OBJECT_LOCK is on, but bucket")
    assert "Object Lock can only be enabled when a bucket is created" in found["Object Lock"]
    assert "create it with `offsite-gateway bucket create`" in found["Object Lock"]
    assert found["verdict"].startswith("cannot work with these settings: 1 problem(s)")
    # The same bucket with OBJECT_LOCK off is fine.
    code, found, output = _check(seaweedfs_server, seaweedfs_bucket, tmp_path)
    assert code == 0, output
    assert found["versioning"] == "ok: off: a delete removes the object"
    assert found["Object Lock"].startswith("ok: not enabled on the bucket")
    assert found["objects"] == "ok: an object was written, read, listed, deleted"
    _empty(seaweedfs_server, seaweedfs_bucket)


def test_a_missing_bucket_wrong_credentials_and_no_storage(
    seaweedfs_server: S3Server, seaweedfs_bucket: str, tmp_path: Path
) -> None:
    code, found, output = _check(seaweedfs_server, "no-such-bucket-here", tmp_path)
    assert code == 1, output
    assert found["bucket"].startswith(
        "cannot work: bucket 'no-such-bucket-here' does not exist at http://127.0.0.1:"
    )
    assert "create it with `offsite-gateway bucket create`" in found["bucket"]
    assert set(found) == {"bucket", "verdict"}
    wrong_secret = "this-secret-is-not-the-one-9f8e7d"
    code, found, output = _check(seaweedfs_server, seaweedfs_bucket, tmp_path, S3_SECRET_KEY=wrong_secret)
    assert code == 1, output
    assert wrong_secret not in output
    assert found["credentials"].startswith("cannot work: storage refuses the requests' signature"), output
    assert "OFFSITE_GATEWAY_S3_SECRET_KEY" in found["credentials"]
    code, found, output = _check(seaweedfs_server, seaweedfs_bucket, tmp_path, S3_ACCESS_KEY="nobody-at-all")
    assert code == 1, output
    assert "storage does not know the access key: check OFFSITE_GATEWAY_S3_ACCESS_KEY" in found["credentials"]
    code, found, output = _check(
        seaweedfs_server, seaweedfs_bucket, tmp_path, S3_ENDPOINT=f"http://127.0.0.1:{free_port()}"
    )
    assert code == 1, output
    assert "does not answer" in found["storage"]


def test_keys_without_the_permissions_a_backup_needs(seaweedfs_server: S3Server, tmp_path: Path) -> None:
    """Read-only keys cannot begin an upload; keys that may write but not lock (no PutObjectRetention) cannot
    complete a backup under OBJECT_LOCK: each said, naming the permission."""
    bucket = seaweedfs_server.create_bucket("narrow", object_lock=True)
    read_only = seaweedfs_server.with_keys(*SEAWEEDFS_READ_ONLY)
    code, found, output = _check(read_only, bucket, tmp_path)
    assert code == 1, output
    assert found["uploads"].startswith("cannot work: storage refuses to begin a multipart upload")
    assert "s3:PutObject" in found["uploads"]
    assert "cannot work: writing an object is refused" in found["objects"]
    no_admin = seaweedfs_server.with_keys(*SEAWEEDFS_NO_ADMIN)
    code, found, output = _check(no_admin, bucket, tmp_path, OBJECT_LOCK="true", PROTECT_DAYS="1")
    assert code == 1, output
    assert found["uploads"].startswith("ok: ")
    assert "putting an object under governance retention is refused" in found["objects"]
    assert "s3:PutObjectRetention" in found["objects"]
    _empty(seaweedfs_server, bucket)


def test_lifecycle_rules_versions_and_default_retention(seaweedfs_server: S3Server, tmp_path: Path) -> None:
    s3 = seaweedfs_server.client()
    bucket = seaweedfs_server.create_bucket("rules")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    code, found, output = _check(seaweedfs_server, bucket, tmp_path, S3_PREFIX="offsite")
    assert code == 0, output
    assert found["versioning"].startswith("warning: on, and no rule expires old versions")
    assert "NoncurrentVersionExpiration" in found["versioning"]
    rules = [
        {
            "ID": "abort",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3},
        },
        {"ID": "old", "Status": "Enabled", "Filter": {"Prefix": "offsite/old/"}, "Expiration": {"Days": 30}},
        {
            "ID": "versions",
            "Status": "Enabled",
            "Filter": {"Prefix": "off"},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 7},
        },
        {"ID": "elsewhere", "Status": "Enabled", "Filter": {"Prefix": "photos/"}, "Expiration": {"Days": 1}},
        {"ID": "off", "Status": "Disabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}},
    ]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    code, found, output = _check(seaweedfs_server, bucket, tmp_path, S3_PREFIX="offsite")
    assert code == 0, output
    lifecycle = found["lifecycle"]
    assert (
        "warning: rule 'old' deletes objects (some of the gateway's) 30 days after they are written"
        in lifecycle
    )
    assert "ok: rule 'abort' aborts multipart uploads left incomplete after 3 days" in lifecycle
    assert "'elsewhere'" not in lifecycle
    assert "'off'" not in lifecycle
    assert found["versioning"] == "ok: on; rule 'versions' expires old versions after 7 days"
    assert found["verdict"] == "usable with these settings, 1 warning(s) above."
    _empty(seaweedfs_server, bucket)

    locked = seaweedfs_server.create_bucket("default", object_lock=True)
    default = {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 2}},
    }
    s3.put_object_lock_configuration(Bucket=locked, ObjectLockConfiguration=default)
    code, found, output = _check(seaweedfs_server, locked, tmp_path, OBJECT_LOCK="true", PROTECT_DAYS="1")
    assert (
        "warning: a default retention (GOVERNANCE, 2 days) locks every object written" in found["Object Lock"]
    )
    assert "Content-MD5" in found["Object Lock"]
    default["Rule"]["DefaultRetention"]["Mode"] = "COMPLIANCE"  # type: ignore[index]
    s3.put_object_lock_configuration(Bucket=locked, ObjectLockConfiguration=default)
    code, found, output = _check(seaweedfs_server, locked, tmp_path, OBJECT_LOCK="true", PROTECT_DAYS="1")
    assert code == 1, output
    assert "cannot work: a default retention (COMPLIANCE, 2 days)" in found["Object Lock"]
    assert found["probes"].startswith("note: not run")
    _empty(seaweedfs_server, locked)


async def test_what_seaweedfs_cannot_play(seaweedfs_server: S3Server, tmp_path: Path) -> None:
    """Through the proxy: storage without an Object Lock API (R2, Garage answer 501), and AWS's refusal of a
    request signed for another region; the check's own requests carry no SDK checksum header (B2's rule)."""
    bucket = f"played-{uuid.uuid4().hex[:8]}"
    async with S3Proxy(seaweedfs_server.endpoint, no_object_lock=True, no_checksums=True) as proxy:
        through = S3Server("proxy", proxy.endpoint, seaweedfs_server.access_key, seaweedfs_server.secret_key)
        env = cli_env(through, bucket, tmp_path, OBJECT_LOCK="true")
        created = await run_cli_async("bucket", "create", env=env)
        assert created.returncode == 1, created
        assert f"storage created bucket {bucket!r} without Object Lock" in created.stderr
        assert "this storage has no S3 Object Lock" in created.stderr
        checked = await run_cli_async("bucket", "check", env=env)
        assert checked.returncode == 1, checked
        found = _lines(checked.stdout)
        assert found["Object Lock"].startswith(
            "cannot work: OFFSITE_GATEWAY_OBJECT_LOCK is on, but this storage has no S3"
        )
        assert "OFFSITE_GATEWAY_OBJECT_LOCK=false" in found["Object Lock"]
        checked = await run_cli_async("bucket", "check", env=cli_env(through, bucket, tmp_path))
        assert checked.returncode == 0, checked
        assert _lines(checked.stdout)["Object Lock"].startswith("ok: this storage has none")
        assert {code for _, code in proxy.refused} == {"NotImplemented"}
    async with S3Proxy(seaweedfs_server.endpoint, region="eu-west-3") as proxy:
        through = S3Server("proxy", proxy.endpoint, seaweedfs_server.access_key, seaweedfs_server.secret_key)
        checked = await run_cli_async("bucket", "check", env=cli_env(through, bucket, tmp_path))
        assert checked.returncode == 1, checked
        found = _lines(checked.stdout)
        assert (
            "another region or at another endpoint: check OFFSITE_GATEWAY_S3_REGION (us-east-1)"
            in found["bucket"]
        )
        assert "expecting 'eu-west-3'" in found["bucket"]


def test_bucket_create_and_check_on_moto(moto_server: S3Server, tmp_path: Path) -> None:
    bucket = f"moto-lock-{uuid.uuid4().hex[:8]}"
    env = cli_env(moto_server, bucket, tmp_path, OBJECT_LOCK="true", PROTECT_DAYS="1")
    assert "created, with Object Lock" in run_cli("bucket", "create", env=env).stdout
    code, found, output = _check(moto_server, bucket, tmp_path, OBJECT_LOCK="true", PROTECT_DAYS="1")
    assert code == 0, output
    assert found["objects"].endswith("locked for 60 s, deleted with every version")
    _empty(moto_server, bucket)


# --- serve's start-up check -----------------------------------------------------------------------------------


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**env, "OFFSITE_GATEWAY_LISTEN": f"127.0.0.1:{port}"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "offsite_gateway", "serve"], env=env, stdout=out, stderr=out
        )


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=20)


def _wait_for(what: str, log: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if what in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{what!r} not in the log:\n{log.read_text(errors='replace')}")


def test_serve_refuses_object_lock_on_a_bucket_without_it(
    seaweedfs_server: S3Server, seaweedfs_bucket: str, tmp_path: Path
) -> None:
    """Every backup would be uploaded and then fail to complete: `serve` exits 2 (a configuration that cannot
    work; the systemd unit does not restart on it), saying why and what fixes it."""
    env = cli_env(seaweedfs_server, seaweedfs_bucket, tmp_path, OBJECT_LOCK="true")
    log = tmp_path / "serve.log"
    process = _serve(env, free_port(), log)
    try:
        assert process.wait(timeout=60) == 2
    finally:
        _stop(process)
    text = log.read_text()
    assert (
        f"offsite-gateway: cannot serve: OFFSITE_GATEWAY_OBJECT_LOCK is on, but bucket {seaweedfs_bucket!r}"
        in text
    )
    assert "Object Lock can only be enabled when a bucket is created" in text
    assert seaweedfs_server.secret_key not in text


def test_serve_names_a_missing_bucket_and_the_fix(seaweedfs_server: S3Server, tmp_path: Path) -> None:
    """A missing bucket: `serve` says so at start, naming the bucket and `offsite-gateway bucket create`, and keeps
    serving with /readyz at 503; once the operator creates the bucket, /readyz answers 200 (no restart)."""
    bucket = f"later-{uuid.uuid4().hex[:8]}"
    env = cli_env(seaweedfs_server, bucket, tmp_path)
    port = free_port()
    log = tmp_path / "serve.log"
    process = _serve(env, port, log)
    try:
        text = _wait_for("does not exist", log)
        assert (
            f"ERROR offsite_gateway: Storage: bucket {bucket!r} does not exist at {seaweedfs_server.endpoint}"
            in text
        )
        assert "create it with `offsite-gateway bucket create`" in text
        assert process.poll() is None
        assert _status(f"http://127.0.0.1:{port}/readyz") == 503
        run_cli("bucket", "create", env=env)
        deadline = time.monotonic() + 30
        while _status(f"http://127.0.0.1:{port}/readyz") != 200:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
    finally:
        _stop(process)


def test_serve_says_which_credential_is_wrong(
    seaweedfs_server: S3Server, seaweedfs_bucket: str, tmp_path: Path
) -> None:
    wrong = "not-the-secret-1a2b3c4d"
    env = cli_env(seaweedfs_server, seaweedfs_bucket, tmp_path, S3_SECRET_KEY=wrong)
    log = tmp_path / "serve.log"
    process = _serve(env, free_port(), log)
    try:
        text = _wait_for("refuses the requests' signature", log)
        assert "OFFSITE_GATEWAY_S3_SECRET_KEY is not the secret of OFFSITE_GATEWAY_S3_ACCESS_KEY" in text
        assert process.poll() is None
    finally:
        _stop(process)
    assert wrong not in log.read_text()


@pytest.mark.parametrize("object_lock", ["false", "true"])
def test_serve_starts_quietly_on_a_good_bucket(
    seaweedfs_server: S3Server, tmp_path: Path, object_lock: str
) -> None:
    bucket = seaweedfs_server.create_bucket("good", object_lock=object_lock == "true")
    env = cli_env(seaweedfs_server, bucket, tmp_path, OBJECT_LOCK=object_lock)
    port = free_port()
    log = tmp_path / "serve.log"
    process = _serve(env, port, log)
    try:
        deadline = time.monotonic() + 30
        while _status(f"http://127.0.0.1:{port}/readyz") != 200:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        _stop(process)
    text = log.read_text()
    assert "WARNING" not in text
    assert "ERROR" not in text
