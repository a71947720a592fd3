"""What of Home Assistant's description of a backup the gateway gets to see.

The gateway stores each backup's description (``AgentBackup.as_dict()``) so that the list comes back whole, on this
Home Assistant or a new one. Everything in it is needed to list and restore a backup — except the installation's
UUID, which Home Assistant puts in ``extra_metadata["instance_id"]`` only to tell its own automatic backups from
others'. That UUID is replaced by a keyed hash before the description leaves the house (the key is the gateway's
instance id, so two gateways never see the same value), and put back when this installation reads the list.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

INSTANCE_ID = "instance_id"
_PREFIX = "offsite-backup:"


class MetadataPrivacy:
    """Replaces this installation's UUID in backup descriptions on the way out, and restores it on the way in."""

    def __init__(self, installation_id: str, gateway_instance_id: str) -> None:
        """``installation_id``: Home Assistant's UUID; ``gateway_instance_id``: the key of the hash."""
        self._installation_id = installation_id
        digest = hmac.new(gateway_instance_id.encode(), installation_id.encode(), hashlib.sha256).hexdigest()
        self._token = _PREFIX + digest

    def outgoing(self, description: dict[str, Any]) -> dict[str, Any]:
        """The description as the gateway stores it: the installation's UUID replaced by its keyed hash."""
        extra = description.get("extra_metadata")
        if not isinstance(extra, dict) or INSTANCE_ID not in extra:
            return description
        value = extra[INSTANCE_ID]
        hidden = self._token if value == self._installation_id else _PREFIX + "another-installation"
        return {**description, "extra_metadata": {**extra, INSTANCE_ID: hidden}}

    def incoming(self, description: dict[str, Any]) -> dict[str, Any]:
        """The description as Home Assistant knows it: this installation's UUID where its hash stands."""
        extra = description.get("extra_metadata")
        if not isinstance(extra, dict) or extra.get(INSTANCE_ID) != self._token:
            return description
        return {**description, "extra_metadata": {**extra, INSTANCE_ID: self._installation_id}}
