"""The house's notify URL of "Alert me from outside if backups stop", kept on the gateway as the options say.

The options flow sets it (``PUT /v1/instance/notify``) or clears it as the user saves the option; ``sync`` runs at
each setup and sets it again where the gateway has none or another (its database rebuilt from the bucket, say).
A URL the gateway holds while the option is off is left alone: only the options flow clears one. Nothing here
logs the URL but as the gateway shows it (``scheme://host/…``).
"""

from __future__ import annotations

from .api import GatewayClient, InstanceInfo, redact_notify_url


async def sync(client: GatewayClient, info: InstanceInfo, enabled: bool, url: str | None, fmt: str) -> bool:
    """Set the gateway's notify URL to the option's if it holds none or another; whether it was set.

    Raises ``GatewayError`` if the gateway refuses or cannot be reached. A gateway without a watchdog (no
    ``watch`` in its answer) is left alone.
    """
    if info.watch is None or not enabled or not url:
        return False
    held = info.watch.notify
    if held is not None and held.url == redact_notify_url(url) and held.format == fmt:
        return False
    await client.set_notify(url, fmt)
    return True
