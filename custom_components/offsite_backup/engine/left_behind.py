"""Uploads left behind on the gateway, handled as its protocol says.

The gateway holds at most one upload in progress per instance: a second create is refused with 409
``upload_in_progress``, naming the one it holds (``details.backup_id``). The integration is its instance's only
uploader, so an upload it holds was left behind (the answer to its creation was lost, say): :func:`in_upload_slot`
aborts it and tries once more, rather than wait hours for the gateway's sweeper. :func:`abort_left_behind` aborts
an upload a restart interrupted, at best effort: the sweeper aborts it later otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from .api import GatewayClient, GatewayConflictError, GatewayError, GatewayNotFoundError

_LOGGER = logging.getLogger(__name__)


async def in_upload_slot[T](client: GatewayClient, attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()``; when the gateway holds another upload in progress, that one aborted and ``attempt()`` again.

    Any other ``GatewayConflictError`` (and a 409 that names no upload) is raised as it is; so is the second
    attempt's.
    """
    try:
        return await attempt()
    except GatewayConflictError as err:
        stuck = err.details.get("backup_id") if err.code == "upload_in_progress" else None
        if not isinstance(stuck, str):
            raise
        _LOGGER.warning("Aborting upload %s left behind on the gateway, then starting again", stuck)
        await client.abort_upload(stuck)
        return await attempt()


async def abort_left_behind(client: GatewayClient, backup_id: str) -> None:
    """Abort an interrupted upload on the gateway; one already gone is fine, any other failure is logged."""
    try:
        await client.abort_upload(backup_id)
    except GatewayNotFoundError:
        pass
    except GatewayError as err:
        _LOGGER.warning("Could not abort the interrupted upload (the gateway's sweeper will): %s", err)
