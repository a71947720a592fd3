"""Who is asking: the client's address, also behind a reverse proxy the operator trusts.

Behind a TLS-terminating proxy every connection comes from the proxy. The proxy names the client in
`X-Forwarded-For`, which anyone can also send: so the header is read only on a connection from an address in
`TRUSTED_PROXIES`, from its right end (the entry the nearest proxy added) leftwards past the trusted proxies.

An entry is an address as proxies write it: `203.0.113.7`, `203.0.113.7:51234`, `2001:db8::1`, `[2001:db8::1]`,
`[2001:db8::1]:51234` (empty entries are skipped, as HTTP's list syntax says). An entry that is none of these (a
host name, `unknown`, an obfuscated identifier, junk) is still what the proxy said of that client: it is the
client `forwarded:<entry>` (its first 64 characters), a source of its own, never the proxy's address, so that one
client's wrong tokens never throttle every client of the proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import hdrs, web

from .config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


UNPARSED_PREFIX = "forwarded:"
UNPARSED_MAX = 64
_PORT_MAX_DIGITS = 5


def _port(text: str) -> bool:
    return 1 <= len(text) <= _PORT_MAX_DIGITS and text.isascii() and text.isdigit()


def forwarded_address(entry: str) -> IPAddress | None:
    """An `X-Forwarded-For` entry's address: `IP`, `IPv4:port`, `[IPv6]` or `[IPv6]:port`; None if it is none."""
    text = entry.strip()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not (rest.startswith(":") and _port(rest[1:]))):
            return None
        return _address(host)
    if text.count(":") == 1:  # IPv4 with a port (an IPv6 address has two colons at least)
        host, _, port = text.partition(":")
        return _address(host) if _port(port) else None
    return _address(text)


def client_address(request: web.BaseRequest, trusted: Sequence[IPNetwork]) -> str:
    """The client's IP address, as text ("unknown" if the transport does not tell); behind a trusted proxy that
    named the client otherwise than by an address, `forwarded:<what it said>`."""
    peer = _address(request.remote or "")
    if peer is None:
        return "unknown"
    client = peer
    if trusted and any(peer in network for network in trusted):
        forwarded = ",".join(request.headers.getall(hdrs.X_FORWARDED_FOR, []))
        for entry in reversed(forwarded.split(",")):
            if not entry.strip():
                continue
            hop = forwarded_address(entry)
            if hop is None:
                return UNPARSED_PREFIX + entry.strip()[:UNPARSED_MAX]
            client = hop
            if not any(hop in network for network in trusted):
                break
    return str(client)


def source_of(address: str) -> str:
    """What wrong tokens are counted by: an IPv4 address, or an IPv6 address's /64 (one site's network)."""
    parsed = _address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network(f"{parsed}/64", strict=False))
    return address
