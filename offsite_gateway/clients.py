"""Who is asking: the client's address, also behind a reverse proxy the operator trusts.

Behind a TLS-terminating proxy every connection comes from the proxy. The proxy names the client in
`X-Forwarded-For`, which anyone can also send: so the header is read only on a connection from an address in
`TRUSTED_PROXIES`, from its right end (the entry the nearest proxy added) leftwards past the trusted proxies.
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


def client_address(request: web.BaseRequest, trusted: Sequence[IPNetwork]) -> str:
    """The client's IP address, as text ("unknown" if the transport does not tell)."""
    peer = _address(request.remote or "")
    if peer is None:
        return "unknown"
    client = peer
    if trusted and any(peer in network for network in trusted):
        forwarded = ",".join(request.headers.getall(hdrs.X_FORWARDED_FOR, []))
        for entry in reversed(forwarded.split(",")):
            hop = _address(entry)
            if hop is None:
                break
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
