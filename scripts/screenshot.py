"""Screenshot of the demo dashboard during a backup (run by `scripts/screenshot`), saved as docs/demo-dashboard.png.

Uses the demo running from `.demo/` (DEMO_DIR), or starts `scripts/demo` itself and stops it afterwards. Then:
logs in as the demo user through Home Assistant's login flow, slows the upload down (the integration's bandwidth
option, put back afterwards) so that the picture catches it half way, opens the dashboard in headless Chromium
(Debian's `chromium`: `apt-get install chromium`) driven over the Chrome DevTools Protocol, calls
`offsite_backup.create_backup`, and takes the picture once the progress sensor is past its first part.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
# Run as `python scripts/screenshot.py`: the repository's packages (the demo's pieces in offsite_demo/).
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from offsite_demo.console import DemoError  # noqa: E402
from offsite_demo.homeassistant import HomeAssistantApi  # noqa: E402
from offsite_demo.settings import DASHBOARD_URL_PATH, DOMAIN, INSTANCE_NAME  # noqa: E402
from tests.helpers.servers import free_port  # noqa: E402

OUTPUT = ROOT / "docs" / "demo-dashboard.png"
PROGRESS = f"sensor.{INSTANCE_NAME}_progress"
STATUS = f"sensor.{INSTANCE_NAME}_status"
SLOW_KIB_S = 2048  # 64 MiB at 2 MiB/s: about half a minute of upload to catch
WIDTH, HEIGHT = 1200, 640
# The text a person sees, through the frontend's shadow roots.
PAGE_TEXT = """(() => {
  const parts = [];
  const walk = (node) => {
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) parts.push(child.textContent);
      else walk(child);
    }
  };
  walk(document.documentElement);
  return parts.join(" ");
})()"""


def say(message: str) -> None:
    """One line on the console."""
    print(f"[screenshot] {message}", flush=True)


class Failed(Exception):
    """The screenshot could not be taken; the message says why."""


def _running_demo(demo_dir: Path) -> dict[str, Any] | None:
    """The running demo's credentials.json, if a demo runs in ``demo_dir``."""
    try:
        pid = int((demo_dir / "demo.pid").read_text())
        os.kill(pid, 0)
        credentials: dict[str, Any] = json.loads((demo_dir / "credentials.json").read_text())
    except (OSError, ValueError):
        return None
    return credentials


@contextlib.asynccontextmanager
async def demo_running(demo_dir: Path) -> AsyncIterator[dict[str, Any]]:
    """The running demo, or one started for the picture (and stopped after it)."""
    credentials = _running_demo(demo_dir)
    if credentials is not None:
        say(f"using the demo running at {credentials['url']}")
        yield credentials
        return
    say("no demo is running: starting scripts/demo (it stops when the picture is taken)")
    process = await asyncio.create_subprocess_exec(
        str(ROOT / "scripts" / "demo"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    drain: asyncio.Task[None] | None = None
    try:
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            print(f"    {line}", flush=True)
            if "Ctrl-C stops everything" in line:
                break
        else:
            raise Failed(f"scripts/demo exited with code {await process.wait()} before it was ready")
        credentials = _running_demo(demo_dir)
        if credentials is None:
            raise Failed(f"scripts/demo runs but {demo_dir}/credentials.json is missing")
        drain = asyncio.create_task(_drain(process.stdout))
        yield credentials
    finally:
        if process.returncode is None:
            say("stopping the demo")
            os.killpg(process.pid, signal.SIGINT)
            await process.wait()
        if drain is not None:
            await drain


async def _drain(stream: asyncio.StreamReader) -> None:
    async for raw in stream:
        print(f"    {raw.decode(errors='replace').rstrip()}", flush=True)


async def set_bandwidth(api: HomeAssistantApi, entry_id: str, kib_s: int | None) -> None:
    """The integration's bandwidth option, through its options flow (the form's current values otherwise)."""
    form = await api.request("POST", "/api/config/config_entries/options/flow", {"handler": entry_id})
    values: dict[str, Any] = {}
    for field in form["data_schema"]:
        suggested = (field.get("description") or {}).get("suggested_value")
        if suggested is not None:
            values[field["name"]] = suggested
    values.pop("bandwidth_limit", None)
    if kib_s:
        values["bandwidth_limit"] = kib_s
    result = await api.request("POST", f"/api/config/config_entries/options/flow/{form['flow_id']}", values)
    if result.get("type") != "create_entry":
        raise Failed(f"the options flow refused {values}: {result}")


async def wait_loaded(api: HomeAssistantApi, entry_id: str) -> None:
    """Wait until the entry is loaded again (options reload it)."""
    for _ in range(120):
        if await api.entry_state(DOMAIN, entry_id) == "loaded":
            return
        await asyncio.sleep(0.5)
    raise Failed("the Offsite Backup entry did not load again")


class Browser:
    """Headless Chromium, one page, driven over the DevTools protocol."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        """Not started yet."""
        self.session = session
        self.profile = Path(tempfile.mkdtemp(prefix="offsite-screenshot-"))
        self.process: asyncio.subprocess.Process | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    async def start(self) -> None:
        """Start Chromium and connect to its page."""
        executable = shutil.which("chromium") or shutil.which("chromium-browser")
        if executable is None:
            raise Failed("Chromium is missing: apt-get install -y chromium (Debian's package)")
        port = free_port()
        self.process = await asyncio.create_subprocess_exec(
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile}",
            f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1",
            f"--window-size={WIDTH},{HEIGHT}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        pages: list[dict[str, Any]] = []
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(f"http://127.0.0.1:{port}/json/list") as answer:
                    pages = [t for t in await answer.json() if t.get("type") == "page"]
                if pages:
                    break
            await asyncio.sleep(0.2)
        if not pages:
            raise Failed("Chromium did not open its DevTools port")
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result."""
        assert self.ws is not None
        self.next_id += 1
        message_id = self.next_id
        await self.ws.send_json({"id": message_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=60)
            if message.get("id") == message_id:
                if "error" in message:
                    raise Failed(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def console(self) -> list[str]:
        """What the page logged (console and browser log entries) so far."""
        lines = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.consoleAPICalled":
                args = " ".join(
                    str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])
                )
                lines.append(f"console.{params.get('type')}: {args}")
            elif event.get("method") == "Log.entryAdded":
                entry = params.get("entry", {})
                lines.append(f"{entry.get('level')}: {entry.get('text')} {entry.get('url', '')}".strip())
            elif event.get("method") == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                lines.append(
                    f"exception: {details.get('text')} {details.get('exception', {}).get('description', '')} {details.get('url', '')}:{details.get('lineNumber')}"
                )
        return lines

    async def wait_for_text(self, texts: list[str], limit: float = 120) -> None:
        """Wait until the page shows every one of ``texts`` (searched through the frontend's shadow roots)."""
        deadline = time.monotonic() + limit
        while True:
            found = await self.send("Runtime.evaluate", expression=PAGE_TEXT, returnByValue=True)
            text = str(found.get("result", {}).get("value", ""))
            if all(wanted in text for wanted in texts):
                return
            if time.monotonic() > deadline:
                raise Failed(
                    f"the dashboard did not show {texts} within {limit:.0f} s; the page said:\n"
                    + "\n".join(self.console()[-15:])
                )
            await asyncio.sleep(0.25)

    async def close(self) -> None:
        """Stop Chromium and remove its profile."""
        if self.ws is not None:
            await self.ws.close()
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


async def take(demo_dir: Path, output: Path) -> None:
    """Everything, in order."""
    async with aiohttp.ClientSession() as session, demo_running(demo_dir) as credentials:
        base = credentials["url"]
        api = HomeAssistantApi(session, base)
        await api.login(credentials["username"], credentials["password"])
        entry_id = credentials["entry_id"]
        say(f"slowing the upload to {SLOW_KIB_S} KiB/s for the picture (the integration's bandwidth option)")
        await set_bandwidth(api, entry_id, SLOW_KIB_S)
        browser = Browser(session)
        backup: asyncio.Task[Any] | None = None
        try:
            await wait_loaded(api, entry_id)
            await browser.start()
            stored = {
                "access_token": api.token,
                "refresh_token": api.refresh_token,
                "token_type": "Bearer",
                "expires_in": api.expires_in,
                "expires": int(time.time() * 1000) + api.expires_in * 1000,
                "hassUrl": base,
                "clientId": api.client_id,
            }
            await browser.send("Page.enable")
            await browser.send("Runtime.enable")
            await browser.send("Log.enable")
            await browser.send(
                "Page.addScriptToEvaluateOnNewDocument",
                source=f"localStorage.setItem('hassTokens', {json.dumps(json.dumps(stored))});",
            )
            await browser.send(
                "Emulation.setDeviceMetricsOverride",
                width=WIDTH,
                height=HEIGHT,
                deviceScaleFactor=1,
                mobile=False,
            )
            await browser.send("Page.navigate", url=f"{base}/{DASHBOARD_URL_PATH}")
            # The frontend loads, connects its websocket and draws the cards: wait until they show.
            await browser.wait_for_text(["Upload progress", "Last success", "Back up now"])
            say("calling offsite_backup.create_backup")
            backup = asyncio.create_task(
                api.request(
                    "POST",
                    "/api/services/offsite_backup/create_backup?return_response",
                    {"config_entry_id": entry_id},
                )
            )
            deadline = time.monotonic() + 300
            while True:
                if backup.done():
                    raise Failed(f"the backup ended before the picture: {backup.result()}")
                progress, status = await api.state(PROGRESS), await api.state(STATUS)
                with contextlib.suppress(ValueError):
                    if status == "uploading" and 25 <= float(progress or "") < 90:
                        break
                if time.monotonic() > deadline:
                    raise Failed(
                        f"no progress to show after 5 minutes (status {status}, progress {progress})"
                    )
                await asyncio.sleep(0.5)
            await browser.wait_for_text(["Uploading"])  # the frontend draws the new state
            await asyncio.sleep(0.5)  # the gauge's needle animates to it
            shot = await browser.send("Page.captureScreenshot", format="png")
            await asyncio.to_thread(output.write_bytes, base64.b64decode(shot["data"]))
            say(f"saved {output} (status {status}, progress {progress} %)")
            await backup
            say("the backup finished")
        finally:
            if backup is not None and not backup.done():
                with contextlib.suppress(Exception):
                    await backup
            await browser.close()
            with contextlib.suppress(Exception):
                await set_bandwidth(api, entry_id, None)
                say("bandwidth option put back (no limit)")


def main() -> int:
    """Parse the arguments and take the picture."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to save it (default {OUTPUT})")
    args = parser.parse_args()
    demo_dir = Path(os.environ.get("DEMO_DIR") or ROOT / ".demo").resolve()
    try:
        asyncio.run(take(demo_dir, args.output.resolve()))
    except (Failed, DemoError) as err:
        say(f"ERROR: {err}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
