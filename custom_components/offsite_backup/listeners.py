"""A list of state listeners, as the runner and the scheduler keep for the entities."""

from __future__ import annotations

from homeassistant.core import CALLBACK_TYPE, callback


class Listeners:
    """Callbacks to call when something's state changes."""

    def __init__(self) -> None:
        """Start with none."""
        self._listeners: list[CALLBACK_TYPE] = []

    @callback
    def add(self, listener: CALLBACK_TYPE) -> CALLBACK_TYPE:
        """Call ``listener`` on every change; returns the function that stops it."""
        self._listeners.append(listener)

        @callback
        def remove() -> None:
            self._listeners.remove(listener)

        return remove

    @callback
    def notify(self) -> None:
        """Call every listener."""
        for listener in list(self._listeners):
            listener()
