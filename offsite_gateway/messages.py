"""What a missed-backup notification says, and how each format carries it (docs/gateway.md, "Missed-backup alerts").

Every notification is first a set of facts, the JSON body of format `json` (version 1: fields are only ever added,
never renamed or removed):

    {"version": 1, "id": "<notice id: the same on every retry>", "event": "late" | "reminder" | "recovered",
     "recipient": "owner" | "operator", "instance": {"id": "…", "name": "home"},
     "state": "late" | "never" | "ok", "expect_every": 129600, "last_success_at": "…Z" | null,
     "due_at": "…Z", "late_since": "…Z", "noticed_at": "…Z", "title": "…", "message": "…"}

Each format sends it its own way, every one signed the same way: `X-Offsite-Signature: sha256=<hex>` is the
HMAC-SHA256, keyed with the recipient's secret, of `<X-Offsite-Timestamp>.` followed by the exact body bytes.

- `json`: the body above, `application/json`.
- `ntfy`: the message as a plain-text body, with ntfy's `Title`, `Priority` and `Tags` headers (a title that is not
  ASCII as an RFC 2047 encoded word, which ntfy decodes), POSTed to the topic's URL.
- `gotify`: `{"title", "message", "priority"}` POSTed to Gotify's `/message?token=…` URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

LATE_EVENT = "late"
REMINDER = "reminder"
RECOVERED = "recovered"
EVENTS = (LATE_EVENT, REMINDER, RECOVERED)

JSON, NTFY, GOTIFY = "json", "ntfy", "gotify"
FORMATS = (JSON, NTFY, GOTIFY)

OWNER, OPERATOR = "owner", "operator"
WEBHOOK, EMAIL = "webhook", "email"

VERSION = 1
MAX_URL = 2048
SIGNATURE = "X-Offsite-Signature"
TIMESTAMP = "X-Offsite-Timestamp"
USER_AGENT = "offsite-gateway"

# ntfy's priorities are 1 (min) to 5 (max), Gotify's 0 to 10.
_NTFY = {LATE_EVENT: ("4", "warning"), REMINDER: ("4", "warning"), RECOVERED: ("3", "white_check_mark")}
_GOTIFY = {LATE_EVENT: 8, REMINDER: 8, RECOVERED: 4}


def iso(timestamp: float | None) -> str | None:
    """ISO 8601 UTC, whole seconds (rounded down: an expiry is never announced later than it is)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(math.floor(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _readable(timestamp: float) -> str:
    return datetime.fromtimestamp(math.floor(timestamp), UTC).strftime("%Y-%m-%d %H:%M UTC")


_UNITS = (("d", 86_400), ("h", 3600), ("min", 60))


def duration_text(seconds: float) -> str:
    """`36 h`, `2 d`, `90 min`, `45 s`: the largest unit it is a whole number of, else (rounded down) the largest
    unit it is at least two of."""
    seconds = max(0, round(seconds))
    for unit, size in _UNITS:
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    for unit, size in _UNITS:
        if seconds >= 2 * size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


@dataclass(frozen=True)
class Facts:
    """What the watchdog knows of an instance when it tells someone."""

    instance_id: str
    name: str
    created_at: float
    state: str  # late, never or ok
    expect_every: int
    last_success: float | None
    due_at: float
    late_since: float  # when it fell due (for a recovery: the silence that ended)


def _texts(event: str, facts: Facts, now: float) -> tuple[str, str]:
    name, every = facts.name, duration_text(facts.expect_every)
    if event == RECOVERED:
        assert facts.last_success is not None
        return (
            f"Backups of {name} are back",
            f"A backup of {name} reached the gateway at {_readable(facts.last_success)}, "
            f"{duration_text(facts.last_success - facts.late_since)} after it was due. "
            f"The next one is expected by {_readable(facts.due_at)}.",
        )
    still = " still" if event == REMINDER else ""
    late_for = duration_text(now - facts.late_since)
    if facts.last_success is None:
        return (
            f"{name} has{' still' if still else ''} never backed up",
            f"The gateway has had no backup of {name} since it was added on {_readable(facts.created_at)}: "
            f"the first one was due by {_readable(facts.due_at)} ({late_for} ago).",
        )
    return (
        f"Backups of {name} are{still} late",
        f"The gateway has had no backup of {name} since {_readable(facts.last_success)}: it expects one every "
        f"{every}, and one was due by {_readable(facts.due_at)} ({late_for} ago).",
    )


def build_payload(notice_id: str, event: str, recipient: str, facts: Facts, now: float) -> dict[str, Any]:
    """The JSON body of a notification (the module's docstring)."""
    title, message = _texts(event, facts, now)
    return {
        "version": VERSION,
        "id": notice_id,
        "event": event,
        "recipient": recipient,
        "instance": {"id": facts.instance_id, "name": facts.name},
        "state": facts.state,
        "expect_every": facts.expect_every,
        "last_success_at": iso(facts.last_success),
        "due_at": iso(facts.due_at),
        "late_since": iso(facts.late_since),
        "noticed_at": iso(now),
        "title": title,
        "message": message,
    }


@dataclass(frozen=True)
class Rendered:
    """A notification as one webhook format sends it."""

    body: bytes
    headers: dict[str, str]


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=` and the HMAC-SHA256 (hex), keyed with `secret`, of `<timestamp>.` and the body."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _header_text(text: str) -> str:
    """A header value: ASCII as it is, anything else as one RFC 2047 encoded word (ntfy decodes them)."""
    if text.isascii() and text.isprintable():
        return text
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode("ascii") + "?="


def render(fmt: str, payload: dict[str, Any], secret: str | None, timestamp: int) -> Rendered:
    """The body and headers of a notification in format `fmt`, signed with `secret` (if any)."""
    event: str = payload["event"]
    headers = {
        "User-Agent": USER_AGENT,
        "X-Offsite-Event": event,
        "X-Offsite-Notice": payload["id"],
        TIMESTAMP: str(timestamp),
    }
    if fmt == NTFY:
        priority, tags = _NTFY[event]
        body = payload["message"].encode()
        headers |= {
            "Content-Type": "text/plain; charset=utf-8",
            "Title": _header_text(payload["title"]),
            "Priority": priority,
            "Tags": tags,
        }
    elif fmt == GOTIFY:
        document = {"title": payload["title"], "message": payload["message"], "priority": _GOTIFY[event]}
        body = json.dumps(document, ensure_ascii=False).encode()
        headers["Content-Type"] = "application/json"
    else:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    if secret:
        headers[SIGNATURE] = signature(secret, timestamp, body)
    return Rendered(body, headers)


def email_message(payload: dict[str, Any], sender: str, recipients: tuple[str, ...]) -> EmailMessage:
    """The e-mail of a notification: its title as the subject, its message and facts as the text."""
    message = EmailMessage()
    message["Subject"] = payload["title"]
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Message-ID"] = f"<{payload['id']}@offsite-gateway>"
    message["X-Offsite-Event"] = payload["event"]
    message["X-Offsite-Notice"] = payload["id"]
    facts = [
        f"Instance: {payload['instance']['name']} ({payload['instance']['id']})",
        f"State: {payload['state']}",
        f"Last success: {payload['last_success_at'] or 'never'}",
        f"Due by: {payload['due_at']}",
        f"Noticed at: {payload['noticed_at']}",
    ]
    message.set_content(payload["message"] + "\n\n" + "\n".join(facts) + "\n")
    return message


def check_notify_url(value: Any) -> str:
    """A notify URL as the gateway accepts one: http(s), a host, no user name, no fragment, printable ASCII (a
    host name in its ASCII form), at most 2048 characters. ValueError says what is wrong, never quoting it."""
    if not isinstance(value, str):
        raise ValueError("expected a string")  # noqa: TRY004 - one error for every bad value, as config's
    text = value.strip()
    if not 1 <= len(text) <= MAX_URL:
        raise ValueError(f"expected 1 to {MAX_URL} characters")
    if not all(33 <= ord(char) < 127 for char in text):
        raise ValueError("expected printable ASCII without spaces (a host name in its xn-- form)")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("expected an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    if parts.username is not None or "@" in parts.netloc:
        raise ValueError("must not carry a user name or password (ntfy takes ?auth=…)")
    if parts.fragment or text.endswith("#"):
        raise ValueError("must not have a fragment")
    return text


def redact_url(url: str) -> str:
    """The URL as logs, lists and answers show it: scheme, host and port; the path and the query, which may be
    secret (an ntfy topic, a Gotify token), become `…`."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "…"
    if ":" in host:
        host = f"[{host}]"
    where = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    return where + ("/…" if parts.path.strip("/") or parts.query else "/")
