"""The demo's names and ports: what it calls things, and the TCP ports it opens on 127.0.0.1 (checked before it
starts anything, so that a taken port gives a clear message instead of a server that dies later)."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

from offsite_demo.console import ROOT, DemoError

COMPONENT = ROOT / "custom_components" / "offsite_backup"
EXAMPLES = ROOT / "examples"
DASHBOARD = EXAMPLES / "dashboard.yaml"

DOMAIN = "offsite_backup"
# The operator's policy for the demo's instance (`offsite-gateway instance set`): a quota, so "Quota used" shows.
DEMO_POLICY = ("--quota", "1GiB", "--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12")
INSTANCE_NAME = "home"  # the entry's title, hence the entity ids (sensor.home_progress, ...)
USERNAME = "demo"
BUCKET = "offsite-demo"
S3_ACCESS_KEY = "offsite-demo"
PART_SIZE = 20 * 1024 * 1024
DASHBOARD_URL_PATH = "offsite-backup"  # the YAML dashboard's address: <Home Assistant>/offsite-backup
SEAWEEDFS_LAST_PORT_OFFSET = 10004  # DEMO_S3_PORT + 4 (admin) + 10000 (its gRPC port)

# Home Assistant 2026.10's voice pipeline (a base platform it always sets up) pins pymicro-vad 1.0.1 and
# pyspeex-noise 1.0.2, which have no wheels for Python 3.14; requirements/current.in pins releases with the same API
# and abi3 wheels instead, and Home Assistant is told to keep them (--skip-pip-packages).
KEPT_REQUIREMENTS = ("pymicro-vad", "pyspeex-noise")


@dataclass(frozen=True)
class Ports:
    """The TCP ports on 127.0.0.1: Home Assistant's, the gateway's, and SeaweedFS's ten, from its S3 port."""

    home_assistant: int
    gateway: int
    s3: int

    @classmethod
    def from_env(cls) -> Ports:
        """DEMO_HA_PORT (8123), DEMO_GATEWAY_PORT (8780) and DEMO_S3_PORT (9000); DemoError for a bad one."""
        return cls(
            port_from_env("DEMO_HA_PORT", 8123),
            port_from_env("DEMO_GATEWAY_PORT", 8780),
            port_from_env("DEMO_S3_PORT", 9000),
        )

    @property
    def seaweedfs(self) -> dict[str, int]:
        """SeaweedFS's HTTP ports (`seaweedfs_command` adds each one's gRPC port, 10000 above)."""
        return {
            "s3": self.s3,
            "master": self.s3 + 1,
            "volume": self.s3 + 2,
            "filer": self.s3 + 3,
            "admin": self.s3 + 4,
        }

    def named(self) -> list[tuple[str, str, int]]:
        """(what, environment variable, port) for each port the demo opens."""
        ports = [
            ("Home Assistant", "DEMO_HA_PORT", self.home_assistant),
            ("the gateway", "DEMO_GATEWAY_PORT", self.gateway),
        ]
        for name, port in self.seaweedfs.items():
            what = (
                "SeaweedFS's S3 server"
                if name == "s3"
                else f"SeaweedFS's {name} (DEMO_S3_PORT + {port - self.s3})"
            )
            ports.append((what, "DEMO_S3_PORT", port))
        for name, port in self.seaweedfs.items():
            ports.append(
                (
                    f"SeaweedFS's {name} gRPC (DEMO_S3_PORT + {port + 10000 - self.s3})",
                    "DEMO_S3_PORT",
                    port + 10000,
                )
            )
        return ports


def port_from_env(variable: str, default: int) -> int:
    """A TCP port from the environment, ``default`` when unset; DemoError when it is not a port."""
    value = os.environ.get(variable) or str(default)
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise DemoError(
            f"{variable}={value!r} is not a TCP port", f"Use a number from 1024 to 65535, e.g. {default}."
        )
    return int(value)


def check_ports(ports: Ports) -> None:
    """Refuse to start anything when a port is taken (a clear message instead of a server that dies later)."""
    if ports.s3 + SEAWEEDFS_LAST_PORT_OFFSET > 65535:
        raise DemoError(
            f"DEMO_S3_PORT={ports.s3} is too high: SeaweedFS also listens on it + 1 to + 4 and on each + 10000",
            f"Use a port up to {65535 - SEAWEEDFS_LAST_PORT_OFFSET}, e.g. 9000.",
        )
    seen: dict[int, str] = {}
    for what, variable, port in ports.named():
        if port in seen:
            raise DemoError(
                f"{what} and {seen[port]} would both use port {port}", f"Give {variable} another port."
            )
        seen[port] = what
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as err:
                if err.errno != errno.EADDRINUSE:
                    raise DemoError(f"cannot use port {port} on 127.0.0.1 for {what}: {err}") from err
                other = ports.s3 + 5 if variable == "DEMO_S3_PORT" else port + 1
                raise DemoError(
                    f"port {port} on 127.0.0.1 is already in use, and {what} needs it",
                    f"Is another demo or Home Assistant running? Stop it, or choose another port: "
                    f"{variable}={other} scripts/demo",
                ) from None
