"""Sending notifications out: webhooks (with a guard on where they may go) and e-mail through SMTP.

A notify URL comes from a house (the integration's option) or from the operator's settings; either way the
gateway treats the request it makes as hostile territory:

- The URL's host is resolved once (`getaddrinfo`, within the timeout) and every address is checked: only a global
  address, or one inside `NOTIFY_ALLOWED_NETWORKS`, may be reached. Loopback, private (RFC 1918, unique local),
  link-local, shared (CGNAT), multicast, reserved and unspecified addresses are refused, also when an IPv6 address
  carries one (IPv4-mapped, 6to4, Teredo, NAT64).
- The connection goes to a checked address: the session resolves through `_PinnedResolver`, which answers the
  URL's host with those addresses and nothing else, so a second lookup cannot swap in another (DNS rebinding).
  The `Host` header and the TLS server name stay the URL's host; certificates are checked against it.
- Connect and total timeouts; no redirect is followed (a 3xx is a failure); at most 64 KiB of the answer are
  read, as sent (no decompression: no archive bomb), then the connection is closed; no proxy from the
  environment.
- A failure says why (`DeliveryError.reason`) and whether a retry may help; neither it nor any log line quotes
  the URL's path or query, which may be secret.
"""

from __future__ import annotations

import asyncio
import ipaddress
import smtplib
import socket
import ssl
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from .config import IPNetwork, Settings
from .messages import Rendered

MAX_ANSWER = 64 * 1024  # bytes of a webhook's answer read at most (then dropped)
CONNECT_TIMEOUT = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class DeliveryError(Exception):
    """A notification was not delivered: `reason` (a metric label), and whether a retry may help."""

    def __init__(self, reason: str, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry = retry


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries, if any (mapped, 6to4, Teredo's client, NAT64)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_allowed(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> bool:
    """Whether a notification may go to `address`: a global one, or one the operator allowed."""
    if any(address.version == network.version and address in network for network in allowed):
        return True
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_v4(address)
        if embedded is not None and not address_allowed(embedded, allowed):
            return False
    return address.is_global and not address.is_multicast


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, in the system resolver's order, each once."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        if address not in found:
            found.append(address)
    return found


async def checked_addresses(
    host: str, port: int, allowed: tuple[IPNetwork, ...], resolve: Resolve, resolve_within: float
) -> list[str]:
    """The addresses of `host` a notification may go to, resolved once (within `resolve_within` seconds);
    DeliveryError if there are none."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            async with asyncio.timeout(resolve_within):
                addresses = await resolve(host, port)
        except TimeoutError:
            raise DeliveryError("dns", "the host name did not resolve in time", retry=True) from None
        except OSError as err:
            raise DeliveryError(
                "dns", f"the host name does not resolve ({err.strerror or err})", retry=True
            ) from None
    usable = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address_allowed(address, allowed):
            usable.append(str(address))
    if not usable:
        raise DeliveryError(
            "forbidden_address",
            "the host is a private, loopback or link-local address (or resolves only to such), which the "
            "gateway's operator does not allow notifications to reach",
            retry=False,
        )
    return usable


class _PinnedResolver(AbstractResolver):
    """What the session resolves the URL's host to: the addresses checked already, and nothing else."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        self._host = host
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self._host:
            raise OSError(
                f"no checked address for another host than the notify URL's ({len(host)} characters)"
            )
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self._addresses
        ]

    async def close(self) -> None:
        """Nothing to close."""


def _status_error(status: int) -> DeliveryError | None:
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return DeliveryError("redirect", f"answered {status} (a redirect, not followed)", retry=False)
    if status in (408, 425, 429) or status >= 500:
        return DeliveryError(f"http_{status // 100}xx", f"answered {status}", retry=True)
    return DeliveryError("http_4xx", f"answered {status}", retry=False)


class WebhookSender:
    """POSTs rendered notifications to webhooks, within the guard of the module's docstring."""

    def __init__(
        self,
        allowed: tuple[IPNetwork, ...],
        timeout: float,
        resolve: Resolve = system_resolve,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allowed = allowed
        self.timeout = timeout
        self.resolve = resolve
        self.ssl_context = ssl_context

    async def check(self, url: str) -> list[str]:
        """The addresses a notification to `url` would go to now; DeliveryError if it may not go there."""
        parsed = URL(url, encoded=True)
        if parsed.host is None:
            raise DeliveryError("invalid_url", "the URL has no host", retry=False)
        return await checked_addresses(
            parsed.host, parsed.port or 0, self.allowed, self.resolve, self.timeout
        )

    async def post(self, url: str, rendered: Rendered) -> int:
        """Send; the HTTP status of a delivery, else DeliveryError."""
        parsed = URL(url, encoded=True)
        addresses = await self.check(url)
        assert parsed.host is not None
        connector = aiohttp.TCPConnector(
            resolver=_PinnedResolver(parsed.host, addresses),
            use_dns_cache=False,
            force_close=True,
            limit=1,
            ssl=self.ssl_context if self.ssl_context is not None else True,
        )
        timeout = aiohttp.ClientTimeout(total=self.timeout, sock_connect=min(CONNECT_TIMEOUT, self.timeout))
        try:
            async with (
                aiohttp.ClientSession(
                    connector=connector, timeout=timeout, trust_env=False, auto_decompress=False
                ) as session,
                session.post(
                    parsed,
                    data=rendered.body,
                    headers={**rendered.headers, "Accept-Encoding": "identity"},
                    allow_redirects=False,
                ) as resp,
            ):
                status = resp.status
                # A little of the answer is read, as sent, so that it counts; the rest is dropped.
                await resp.content.read(MAX_ANSWER)
        except TimeoutError:
            raise DeliveryError("timeout", f"no answer within {self.timeout:g} s", retry=True) from None
        except aiohttp.ClientSSLError as err:
            raise DeliveryError("tls", f"TLS failed ({type(err).__name__})", retry=True) from None
        except (aiohttp.ClientError, OSError) as err:
            raise DeliveryError("connect", f"could not deliver ({type(err).__name__})", retry=True) from None
        error = _status_error(status)
        if error is not None:
            raise error
        return status


class EmailSender:
    """Sends notification e-mails through the operator's SMTP server (`SMTP_*` settings)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, message: EmailMessage) -> None:
        """One SMTP exchange (in a worker thread: smtplib blocks), within the timeout; else DeliveryError."""
        try:
            async with asyncio.timeout(self.settings.notify_timeout + 5):
                await asyncio.to_thread(self._send, message)
        except TimeoutError:
            raise DeliveryError("timeout", "the SMTP server did not answer in time", retry=True) from None
        except smtplib.SMTPResponseException as err:
            retry = 400 <= err.smtp_code < 500
            raise DeliveryError("smtp", f"the SMTP server answered {err.smtp_code}", retry=retry) from None
        except (smtplib.SMTPException, OSError) as err:
            raise DeliveryError("smtp", f"SMTP failed ({type(err).__name__})", retry=True) from None

    def _send(self, message: EmailMessage) -> None:
        settings = self.settings
        assert settings.smtp_host is not None
        timeout = float(settings.notify_timeout)
        context = ssl.create_default_context()
        # The EHLO name: the sender's domain (not this machine's name, which smtplib would look up and tell).
        helo = settings.smtp_from.rpartition("@")[2] or "localhost"
        smtp: smtplib.SMTP
        if settings.smtp_security == "tls":
            smtp = smtplib.SMTP_SSL(
                settings.smtp_host, settings.smtp_port, helo, timeout=timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, helo, timeout=timeout)
        with smtp:
            if settings.smtp_security == "starttls":
                smtp.starttls(context=context)
            if settings.smtp_user and settings.smtp_password:
                smtp.login(settings.smtp_user, settings.smtp_password)
            refused: dict[str, Any] = smtp.send_message(message)
        if refused:
            raise DeliveryError("smtp", f"the SMTP server refused {len(refused)} recipient(s)", retry=False)
