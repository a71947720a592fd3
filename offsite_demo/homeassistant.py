"""A client of Home Assistant's REST and websocket APIs, as the frontend uses them: tokens from onboarding or the
login flow, REST calls that fail with the answer, websocket commands and event subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from offsite_demo.console import DemoError


class HomeAssistantApi:
    """Home Assistant's REST and websocket APIs, as an admin user."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        """No token yet: ``exchange_code`` (after onboarding's user step) or ``login`` sets it."""
        self.session = session
        self.base = base
        self.token: str | None = None
        self.refresh_token: str | None = None
        self.expires_in = 0  # seconds the access token is valid for, from when it was given

    def __repr__(self) -> str:
        """Where; never the tokens."""
        return f"HomeAssistantApi({self.base})"

    @property
    def client_id(self) -> str:
        """The OAuth client id the frontend uses."""
        return f"{self.base}/"

    @property
    def headers(self) -> dict[str, str]:
        """The bearer token, once there is one."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def request(self, method: str, path: str, data: Any = None, *, expect: int = 200) -> Any:
        """Call the REST API; DemoError when the answer is not ``expect``."""
        async with self.session.request(method, self.base + path, json=data, headers=self.headers) as answer:
            text = await answer.text()
            if answer.status != expect:
                detail = " ".join(text.split())[:500]
                raise DemoError(f"Home Assistant answered {answer.status} to {method} {path}: {detail}")
            return json.loads(text) if text else None

    async def exchange_code(self, code: str) -> None:
        """The OAuth step the frontend does after login: an authorization code for tokens."""
        form = {"grant_type": "authorization_code", "code": code, "client_id": self.client_id}
        async with self.session.post(self.base + "/auth/token", data=form) as answer:
            tokens = await answer.json()
            if answer.status != 200:
                raise DemoError(f"Home Assistant refused the authorization code: {tokens}")
        self.token = tokens["access_token"]
        self.refresh_token = tokens["refresh_token"]
        self.expires_in = int(tokens["expires_in"])

    async def login(self, username: str, password: str) -> None:
        """Log in as the login page does (the login flow, then the authorization code for tokens)."""
        flow = await self.request(
            "POST",
            "/auth/login_flow",
            {
                "client_id": self.client_id,
                "handler": ["homeassistant", None],
                "redirect_uri": f"{self.base}/?auth_callback=1",
            },
        )
        result = await self.request(
            "POST",
            f"/auth/login_flow/{flow['flow_id']}",
            {"client_id": self.client_id, "username": username, "password": password},
        )
        if result.get("type") != "create_entry":
            raise DemoError(f"Home Assistant refused the login of {username!r}: {result}")
        await self.exchange_code(result["result"])

    async def wait_running(self, limit: float = 300) -> None:
        """Wait until Home Assistant's state is RUNNING (it has started everything it sets up at start)."""
        deadline = time.monotonic() + limit
        while True:
            state = (await self.request("GET", "/api/config")).get("state")
            if state == "RUNNING":
                return
            if time.monotonic() > deadline:
                raise DemoError(f"Home Assistant is still {state} after {limit:.0f} s")
            await asyncio.sleep(0.5)

    async def state(self, entity_id: str | None) -> str | None:
        """An entity's state (None for no entity)."""
        if entity_id is None:
            return None
        state: str = (await self.request("GET", f"/api/states/{entity_id}"))["state"]
        return state

    async def entry_state(self, domain: str, entry_id: str) -> str | None:
        """The state of a config entry ("loaded", "setup_retry", ...), None if there is no such entry."""
        entries = await self.request("GET", f"/api/config/config_entries/entry?domain={domain}")
        return next((e["state"] for e in entries if e["entry_id"] == entry_id), None)

    @contextlib.asynccontextmanager
    async def websocket(self) -> AsyncIterator[Websocket]:
        """An authenticated websocket connection."""
        async with self.session.ws_connect(self.base.replace("http", "ws", 1) + "/api/websocket") as ws:
            hello = await ws.receive_json()
            if hello.get("type") != "auth_required":
                raise DemoError(f"unexpected websocket greeting: {hello}")
            await ws.send_json({"type": "auth", "access_token": self.token})
            answer = await ws.receive_json()
            if answer.get("type") != "auth_ok":
                raise DemoError(f"the websocket refused the token: {answer}")
            socket_client = Websocket(ws)
            reader = asyncio.create_task(socket_client.read())
            try:
                yield socket_client
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader


class Websocket:
    """Commands and event subscriptions on one websocket connection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Wrap a connection that is authenticated already."""
        self.ws = ws
        self.next_id = 1
        self.results: dict[int, asyncio.Future[Any]] = {}
        self.subscriptions: dict[int, Callable[[dict[str, Any]], None]] = {}

    async def read(self) -> None:
        """Dispatch results and events until the connection closes."""
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = message.json()
            if data.get("type") == "event" and data["id"] in self.subscriptions:
                self.subscriptions[data["id"]](data["event"])
            elif data.get("type") == "result" and (future := self.results.pop(data["id"], None)):
                if data.get("success"):
                    future.set_result(data.get("result"))
                else:
                    future.set_exception(DemoError(f"websocket command failed: {data.get('error')}"))
        for future in self.results.values():
            if not future.done():
                future.set_exception(DemoError("Home Assistant closed the websocket"))

    async def call(self, command: str, **data: Any) -> Any:
        """Send a command and wait for its result."""
        message_id, future = self._expect_result()
        await self.ws.send_json({"id": message_id, "type": command, **data})
        async with asyncio.timeout(60):
            return await future

    async def call_if_known(self, command: str, **data: Any) -> Any:
        """``call``, or None where this Home Assistant has no such command (an older version)."""
        try:
            return await self.call(command, **data)
        except DemoError as err:
            if "unknown_command" in str(err):
                return None
            raise

    async def subscribe(self, event_type: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Call ``handler`` with each event of ``event_type``."""
        message_id, future = self._expect_result()
        self.subscriptions[message_id] = handler
        await self.ws.send_json({"id": message_id, "type": "subscribe_events", "event_type": event_type})
        await future

    def _expect_result(self) -> tuple[int, asyncio.Future[Any]]:
        """A new message id, and the future its result sets."""
        message_id = self.next_id
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.results[message_id] = future
        return message_id, future
