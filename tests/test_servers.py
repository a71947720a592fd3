"""The local S3 servers the suite relies on start, speak S3, and say why when they cannot start."""

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import servers
from tests.helpers.servers import S3Server, ServerDidNotStart


def test_moto_roundtrip(moto_server: S3Server, moto_bucket: str) -> None:
    client = moto_server.client()
    client.put_object(Bucket=moto_bucket, Key="a", Body=b"hello")
    assert client.get_object(Bucket=moto_bucket, Key="a")["Body"].read() == b"hello"


def test_seaweedfs_roundtrip(seaweedfs_server: S3Server, seaweedfs_bucket: str) -> None:
    client = seaweedfs_server.client()
    client.put_object(Bucket=seaweedfs_bucket, Key="a", Body=b"hello")
    assert client.get_object(Bucket=seaweedfs_bucket, Key="a")["Body"].read() == b"hello"


def _ports_of(process: subprocess.Popen[bytes]) -> dict[str, int]:
    """The HTTP ports a `weed mini` was given, by service, read from its command line."""
    found = {}
    for argument in process.args:  # type: ignore[union-attr]
        if match := re.fullmatch(r"-(\w+)\.port=(\d+)", str(argument)):
            found[match[1]] = int(match[2])
    return found


def test_seaweedfs_listens_on_loopback_only_and_keeps_to_its_folder(seaweedfs_server: S3Server) -> None:
    """Every port the server opens was given and is bound to 127.0.0.1; in /tmp only the five gRPC sockets whose
    folder SeaweedFS fixes (seaweedfs_grpc_sockets), named after its ports."""
    assert seaweedfs_server.process is not None
    pid = seaweedfs_server.process.pid
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    mine = [line.split()[3] for line in listening.splitlines() if f"pid={pid}," in line]
    assert mine, listening
    assert all(address.startswith("127.0.0.1:") for address in mine), mine
    ports = _ports_of(seaweedfs_server.process)
    assert set(ports) == set(servers.SEAWEEDFS_SERVICES)
    numbers = {str(port) for port in ports.values()} | {str(port + 10000) for port in ports.values()}
    in_tmp = {
        path
        for path in Path("/tmp").glob("seaweedfs-*")
        if (number := re.search(r"(\d+)\.sock$", path.name)) and number[1] in numbers
    }
    assert in_tmp <= set(servers.seaweedfs_grpc_sockets(ports)), in_tmp


def test_seaweedfs_removes_its_sockets_from_tmp_when_it_stops(tmp_path: Path) -> None:
    with servers.run_seaweedfs(tmp_path / "seaweedfs") as server:
        assert server.process is not None
        sockets = servers.seaweedfs_grpc_sockets(_ports_of(server.process))
        made = [path for path in sockets if path.exists()]
        assert made, f"SeaweedFS no longer makes {sockets}: drop the clean-up"
    assert [path for path in sockets if path.exists()] == [], f"it made {made}"


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    """A server that exits at once fails with the last lines of its log, not just an exit code."""
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; print('first line'); print('bind: address in use'); sys.exit(3)",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        process.wait(timeout=30)
    with pytest.raises(ServerDidNotStart, match=r"(?s)exited with code 3.*bind: address in use"):
        servers._wait_http("http://127.0.0.1:9/", process, "the server", timeout=5, log=log)


def test_seaweedfs_missing_binary_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "WEED", tmp_path / "weed")
    with pytest.raises(ServerDidNotStart, match="run scripts/setup"), servers.run_seaweedfs(tmp_path):
        pass


def test_seaweedfs_started_again_when_it_loses_a_port_race(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port free when chosen may be taken before SeaweedFS binds it (other processes share the machine): it
    then exits saying so, and is started again on other ports."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    given: list[int] = []
    real = servers._free_port_pair

    def first_port_taken(ports: set[int]) -> int:
        port = taken.getsockname()[1] if not given else real(ports)
        given.append(port)
        return port

    monkeypatch.setattr(servers, "_free_port_pair", first_port_taken)
    try:
        with servers.run_seaweedfs(tmp_path / "raced") as server:
            client = server.client()
            client.create_bucket(Bucket="raced")
            client.put_object(Bucket="raced", Key="a", Body=b"hello")
    finally:
        taken.close()
    assert servers.PORT_RACE in (tmp_path / "raced" / "seaweedfs.log").read_text()
    assert len(given) == 10  # five ports a start, twice
