"""What the demo's steps share: where it runs, its ports and secrets, what the gateway and Home Assistant gave it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from offsite_demo.console import ROOT, Result
from offsite_demo.processes import Processes
from offsite_demo.settings import BUCKET, DOMAIN, PART_SIZE, S3_ACCESS_KEY, Ports
from tests.helpers.servers import S3Server


class Demo:
    """One demo machine: its directory, Home Assistant's configuration folder, its processes and its checks."""

    def __init__(self, demo_dir: Path, ports: Ports, sample_mib: int, ha_dir: Path | None = None) -> None:
        """Nothing started yet; Home Assistant's configuration goes to ``ha_dir`` (``<demo_dir>/ha``)."""
        self.dir = demo_dir
        self.ha_dir = ha_dir or demo_dir / "ha"
        self.ports = ports
        self.sample_mib = sample_mib
        self.processes = Processes()
        self.password = secrets.token_urlsafe(12)
        self.backup_key = "-".join(secrets.token_hex(2).upper() for _ in range(7))
        self.s3_secret = secrets.token_urlsafe(24)  # SeaweedFS checks every request's signature with it
        self.seaweedfs_dir = demo_dir / "seaweedfs"
        self.s3_endpoint = f"http://127.0.0.1:{ports.s3}"
        self.gateway_url = f"http://127.0.0.1:{ports.gateway}"
        self.ha_url = f"http://127.0.0.1:{ports.home_assistant}"
        self.instance_id = ""  # given by `offsite-gateway instance add`, with the token
        self.token = ""
        self.entry_id = ""  # given by the config flow
        self.result = Result()
        self.staying_up = False
        self.installs: list[str] = []  # what Home Assistant's log says it installed
        # The gateway's settings are the demo's alone: none of the caller's OFFSITE_GATEWAY_* (a key prefix, say).
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OFFSITE_GATEWAY_")}
        self.env.update(
            {
                "OFFSITE_GATEWAY_LISTEN": f"127.0.0.1:{ports.gateway}",
                "OFFSITE_GATEWAY_DB": str(demo_dir / "gateway.sqlite3"),
                "OFFSITE_GATEWAY_S3_ENDPOINT": self.s3_endpoint,
                "OFFSITE_GATEWAY_S3_BUCKET": BUCKET,
                "OFFSITE_GATEWAY_S3_ACCESS_KEY": S3_ACCESS_KEY,
                "OFFSITE_GATEWAY_S3_SECRET_KEY": self.s3_secret,
                "OFFSITE_GATEWAY_PART_SIZE": str(PART_SIZE),
                "PYTHONUNBUFFERED": "1",
                # This checkout's gateway, also where the environment's editable install points at another one.
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            }
        )

    def __repr__(self) -> str:
        """Where it runs; never its secrets."""
        return f"Demo({self.dir}, {self.ports})"

    @property
    def agent_id(self) -> str:
        """Home Assistant's backup agent (location) of the entry."""
        return f"{DOMAIN}.{self.instance_id}"

    @property
    def s3(self) -> S3Server:
        """The demo's S3 server and its keys."""
        return S3Server("seaweedfs", self.s3_endpoint, access_key=S3_ACCESS_KEY, secret_key=self.s3_secret)
