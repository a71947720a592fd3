"""Config flow: gateway URL and instance token, checked live; reauth, reconfigure and options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeassistant.config_entries import (
    ConfigEntry,
    ConfigEntryState,
    ConfigFlow,
    ConfigFlowResult,
    OptionsFlow,
)
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.hassio import is_hassio
from homeassistant.helpers.selector import (
    BooleanSelector,
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
    TextSelectorConfig,
    TextSelectorType,
    TimeSelector,
)
from homeassistant.util import dt as dt_util
from yarl import URL

from .compat import vol
from .const import (
    CONF_ADDONS,
    CONF_ALLOW_UNENCRYPTED,
    CONF_BANDWIDTH_LIMIT,
    CONF_CONTENTS,
    CONF_FAILURES_BEFORE_REPAIR,
    CONF_FOLDERS,
    CONF_INCLUDE_DATABASE,
    CONF_KEEP_LOCAL,
    CONF_NIGHTLY,
    CONF_NOTIFY_FORMAT,
    CONF_NOTIFY_URL,
    CONF_OUTSIDE_ALERTS,
    CONF_PARTS_IN_FLIGHT,
    CONF_RESTORE_DRILL,
    CONF_STALE_AFTER,
    CONF_TOKEN,
    CONF_URL,
    CONF_WINDOW_END,
    CONF_WINDOW_START,
    CONTENTS_AUTOMATIC,
    CONTENTS_CUSTOM,
    CONTENTS_FULL,
    DEFAULT_NOTIFY_FORMAT,
    DOMAIN,
    LOGGER,
    MAX_FAILURES_BEFORE_REPAIR,
    MAX_PARTS_IN_FLIGHT,
    MAX_STALE_AFTER,
    MIN_PARTS_IN_FLIGHT,
    NOTIFY_FORMATS,
    DrillSchedule,
)
from .contents import FOLDERS
from .engine.api import (
    GatewayAuthError,
    GatewayClient,
    GatewayError,
    GatewayNotFoundError,
    GatewayUnavailableError,
    InstanceInfo,
    redact_notify_url,
)
from .settings import Settings

URL_SELECTOR = TextSelector(TextSelectorConfig(type=TextSelectorType.URL))
# hassfest refuses URLs in translations: the example address is a placeholder.
URL_PLACEHOLDERS = {"example_url": "https://backup.example.com"}
NOTIFY_PLACEHOLDERS = {"ntfy_example": "https://ntfy.sh/a-long-random-topic"}
TOKEN_SELECTOR = TextSelector(TextSelectorConfig(type=TextSelectorType.PASSWORD))


class TimeOfDaySelector(TimeSelector):
    """A time of day in hours and minutes: the frontend's time selector without its seconds field.

    The frontend reads ``no_second`` (its own schedule and time-condition forms use it); Home Assistant's selector
    schema does not list it, so it is added where the form is serialised for the frontend only.
    """

    def serialize(self) -> dict[str, dict[str, Any]]:
        """The selector as the frontend gets it."""
        return {"selector": {self.selector_type: {**self.config, "no_second": True}}}


TIME_OF_DAY_SELECTOR = TimeOfDaySelector()


def _is_notify_url(value: str) -> bool:
    """An http(s) URL with a host and no fragment (the gateway checks the rest: where it points)."""
    try:
        url = URL(value)
    except (TypeError, ValueError):
        return False
    return url.scheme in ("http", "https") and bool(url.host) and not url.fragment and not url.user


def _normalise_url(value: str) -> str | None:
    """The gateway's base URL without a trailing slash, or ``None`` when it is not an http(s) URL."""
    try:
        url = URL(value.strip())
    except (TypeError, ValueError):
        return None
    if url.scheme not in ("http", "https") or not url.host or url.query_string or url.fragment:
        return None
    return str(url).rstrip("/")


class OffsiteBackupConfigFlow(ConfigFlow, domain=DOMAIN):
    """Add a gateway instance."""

    VERSION = 1

    async def _validate(self, url: str, token: str) -> tuple[InstanceInfo | None, dict[str, str]]:
        """Ask the gateway who the token belongs to; returns the instance or the form's errors."""
        base = _normalise_url(url)
        if base is None:
            return None, {CONF_URL: "invalid_url"}
        client = GatewayClient(async_get_clientsession(self.hass), base, token.strip())
        try:
            return await client.get_instance(), {}
        except GatewayAuthError:
            return None, {"base": "invalid_auth"}
        except GatewayError as err:
            LOGGER.debug("Cannot reach the gateway at %s: %s", base, err)
            return None, {"base": "cannot_connect"}
        except Exception:
            LOGGER.exception("Unexpected error checking the gateway at %s", base)
            return None, {"base": "unknown"}

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Ask for the gateway's URL and the instance token."""
        errors: dict[str, str] = {}
        if user_input is not None:
            info, errors = await self._validate(user_input[CONF_URL], user_input[CONF_TOKEN])
            if info is not None:
                await self.async_set_unique_id(info.id)
                self._abort_if_unique_id_configured()
                return self.async_create_entry(
                    title=info.name,
                    data={
                        CONF_URL: _normalise_url(user_input[CONF_URL]),
                        CONF_TOKEN: user_input[CONF_TOKEN].strip(),
                    },
                )
        return self.async_show_form(
            step_id="user",
            data_schema=self.add_suggested_values_to_schema(
                vol.Schema({vol.Required(CONF_URL): URL_SELECTOR, vol.Required(CONF_TOKEN): TOKEN_SELECTOR}),
                user_input,
            ),
            description_placeholders=URL_PLACEHOLDERS,
            errors=errors,
        )

    async def async_step_reauth(self, entry_data: Mapping[str, Any]) -> ConfigFlowResult:
        """The gateway refused the token."""
        return await self.async_step_reauth_confirm()

    async def async_step_reauth_confirm(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Ask for a new token for the same instance."""
        entry = self._get_reauth_entry()
        errors: dict[str, str] = {}
        if user_input is not None:
            info, errors = await self._validate(entry.data[CONF_URL], user_input[CONF_TOKEN])
            if info is not None:
                await self.async_set_unique_id(info.id)
                self._abort_if_unique_id_mismatch(reason="wrong_instance")
                return self._update_and_finish(
                    entry, {CONF_TOKEN: user_input[CONF_TOKEN].strip()}, "reauth_successful"
                )
        return self.async_show_form(
            step_id="reauth_confirm",
            data_schema=vol.Schema({vol.Required(CONF_TOKEN): TOKEN_SELECTOR}),
            description_placeholders={"title": entry.title, "url": entry.data[CONF_URL]},
            errors=errors,
        )

    async def async_step_reconfigure(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Change the gateway's URL or the token (same instance)."""
        entry = self._get_reconfigure_entry()
        errors: dict[str, str] = {}
        if user_input is not None:
            info, errors = await self._validate(user_input[CONF_URL], user_input[CONF_TOKEN])
            if info is not None:
                await self.async_set_unique_id(info.id)
                self._abort_if_unique_id_mismatch(reason="wrong_instance")
                return self._update_and_finish(
                    entry,
                    {
                        CONF_URL: _normalise_url(user_input[CONF_URL]),
                        CONF_TOKEN: user_input[CONF_TOKEN].strip(),
                    },
                    "reconfigure_successful",
                )
        return self.async_show_form(
            step_id="reconfigure",
            data_schema=self.add_suggested_values_to_schema(
                vol.Schema({vol.Required(CONF_URL): URL_SELECTOR, vol.Required(CONF_TOKEN): TOKEN_SELECTOR}),
                user_input or {CONF_URL: entry.data[CONF_URL]},
            ),
            description_placeholders=URL_PLACEHOLDERS,
            errors=errors,
        )

    @callback
    def _update_and_finish(
        self, entry: ConfigEntry[Any], data_updates: dict[str, Any], reason: str
    ) -> ConfigFlowResult:
        """Save the new settings and finish; the entry reloads once.

        A loaded entry reloads through its update listener, which first lets a backup in progress end. An entry that
        is not loaded (the gateway refused the old token at setup) has no listener: its reload is scheduled here.
        """
        loaded = (
            entry.state is ConfigEntryState.LOADED
        )  # before the update: its listener may start a reload at once
        changed = self.hass.config_entries.async_update_entry(entry, data={**entry.data, **data_updates})
        if not loaded:
            self.hass.config_entries.async_schedule_reload(entry.entry_id)
        elif not changed:
            LOGGER.debug("%s: the same settings were entered again; nothing to reload", entry.title)
        return self.async_abort(reason=reason)

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: ConfigEntry[Any]) -> OffsiteBackupOptionsFlow:
        """The options flow."""
        return OffsiteBackupOptionsFlow()


def _options_schema(supervised: bool) -> vol.Schema:
    contents = [CONTENTS_FULL, CONTENTS_AUTOMATIC, *([CONTENTS_CUSTOM] if supervised else [])]
    return vol.Schema(
        {
            vol.Required(CONF_NIGHTLY): BooleanSelector(),
            vol.Required(CONF_CONTENTS): SelectSelector(
                SelectSelectorConfig(
                    options=contents, translation_key=CONF_CONTENTS, mode=SelectSelectorMode.LIST
                )
            ),
            vol.Required(CONF_WINDOW_START): TIME_OF_DAY_SELECTOR,
            vol.Required(CONF_WINDOW_END): TIME_OF_DAY_SELECTOR,
            vol.Required(CONF_PARTS_IN_FLIGHT): NumberSelector(
                NumberSelectorConfig(
                    min=MIN_PARTS_IN_FLIGHT, max=MAX_PARTS_IN_FLIGHT, step=1, mode=NumberSelectorMode.BOX
                )
            ),
            vol.Optional(CONF_BANDWIDTH_LIMIT): NumberSelector(
                NumberSelectorConfig(min=0, step=1, unit_of_measurement="KiB/s", mode=NumberSelectorMode.BOX)
            ),
            vol.Required(CONF_INCLUDE_DATABASE): BooleanSelector(),
            vol.Required(CONF_FAILURES_BEFORE_REPAIR): NumberSelector(
                NumberSelectorConfig(
                    min=1, max=MAX_FAILURES_BEFORE_REPAIR, step=1, mode=NumberSelectorMode.BOX
                )
            ),
            vol.Required(CONF_STALE_AFTER): NumberSelector(
                NumberSelectorConfig(
                    min=1, max=MAX_STALE_AFTER, step=1, unit_of_measurement="h", mode=NumberSelectorMode.BOX
                )
            ),
            vol.Required(CONF_ALLOW_UNENCRYPTED): BooleanSelector(),
            vol.Required(CONF_KEEP_LOCAL): BooleanSelector(),
            vol.Required(CONF_RESTORE_DRILL): SelectSelector(
                SelectSelectorConfig(
                    options=[schedule.value for schedule in DrillSchedule],
                    translation_key=CONF_RESTORE_DRILL,
                    mode=SelectSelectorMode.DROPDOWN,
                )
            ),
            vol.Optional(CONF_OUTSIDE_ALERTS, default=False): BooleanSelector(),
            vol.Optional(CONF_NOTIFY_URL): URL_SELECTOR,
            vol.Optional(CONF_NOTIFY_FORMAT, default=DEFAULT_NOTIFY_FORMAT): SelectSelector(
                SelectSelectorConfig(
                    options=list(NOTIFY_FORMATS),
                    translation_key=CONF_NOTIFY_FORMAT,
                    mode=SelectSelectorMode.DROPDOWN,
                )
            ),
        }
    )


def _current_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options as the form shows them (defaults filled in)."""
    settings = Settings.from_options(dict(options))
    current: dict[str, Any] = {
        CONF_NIGHTLY: settings.nightly,
        CONF_WINDOW_START: settings.window.start.strftime("%H:%M"),
        CONF_WINDOW_END: settings.window.end.strftime("%H:%M"),
        CONF_PARTS_IN_FLIGHT: settings.parts_in_flight,
        CONF_INCLUDE_DATABASE: settings.include_database,
        CONF_FAILURES_BEFORE_REPAIR: settings.failures_before_repair,
        CONF_STALE_AFTER: int(settings.stale_after.total_seconds() // 3600),
        CONF_ALLOW_UNENCRYPTED: settings.allow_unencrypted,
        CONF_KEEP_LOCAL: settings.keep_local,
        CONF_CONTENTS: settings.contents.contents,
        CONF_ADDONS: list(settings.contents.addons),
        CONF_FOLDERS: list(settings.contents.folders),
        CONF_RESTORE_DRILL: settings.restore_drill.value,
        CONF_OUTSIDE_ALERTS: settings.outside_alerts,
        CONF_NOTIFY_FORMAT: settings.notify_format,
    }
    if settings.notify_url:
        current[CONF_NOTIFY_URL] = settings.notify_url
    if settings.bandwidth_limit:
        current[CONF_BANDWIDTH_LIMIT] = settings.bandwidth_limit // 1024
    return current


class OffsiteBackupOptionsFlow(OptionsFlow):
    """Nightly schedule, what a backup holds, upload tuning and alerting."""

    def __init__(self) -> None:
        """Start with nothing chosen."""
        self._chosen: dict[str, Any] = {}

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Show and check the options."""
        errors: dict[str, str] = {}
        supervised = is_hassio(self.hass)
        current = _current_options(self.config_entry.options)
        if user_input is not None:
            # "01:00" and "01:00:00" are the same time: compare times, not their texts.
            if dt_util.parse_time(user_input[CONF_WINDOW_START]) == dt_util.parse_time(
                user_input[CONF_WINDOW_END]
            ):
                errors[CONF_WINDOW_END] = "empty_window"
            else:
                data = {CONF_ADDONS: current[CONF_ADDONS], CONF_FOLDERS: current[CONF_FOLDERS], **user_input}
                for key in (
                    CONF_PARTS_IN_FLIGHT,
                    CONF_FAILURES_BEFORE_REPAIR,
                    CONF_STALE_AFTER,
                    CONF_BANDWIDTH_LIMIT,
                ):
                    if key in data:
                        data[key] = int(data[key])
                if not data.get(CONF_BANDWIDTH_LIMIT):
                    data.pop(CONF_BANDWIDTH_LIMIT, None)
                errors = await self._apply_outside_alerts(data)
                if not errors and supervised and data[CONF_CONTENTS] == CONTENTS_CUSTOM:
                    self._chosen = data
                    return await self.async_step_contents()
                if not errors:
                    return self.async_create_entry(data=data)
        return self.async_show_form(
            step_id="init",
            data_schema=self.add_suggested_values_to_schema(
                _options_schema(supervised), user_input or current
            ),
            description_placeholders=NOTIFY_PLACEHOLDERS,
            errors=errors,
        )

    async def _apply_outside_alerts(self, data: dict[str, Any]) -> dict[str, str]:
        """Give the gateway the URL of "Alert me from outside if backups stop", or take it back, when the option
        changed; the form's errors (the URL never in a log but as ``scheme://host/…``)."""
        url = str(data.get(CONF_NOTIFY_URL) or "").strip()
        if url:
            data[CONF_NOTIFY_URL] = url
        else:
            data.pop(CONF_NOTIFY_URL, None)
        enabled = bool(data.get(CONF_OUTSIDE_ALERTS))
        fmt = str(data.get(CONF_NOTIFY_FORMAT) or DEFAULT_NOTIFY_FORMAT)
        if url and not _is_notify_url(url):
            return {CONF_NOTIFY_URL: "invalid_notify_url"}
        if enabled and not url:
            return {CONF_NOTIFY_URL: "notify_url_required"}
        before = Settings.from_options(dict(self.config_entry.options))
        if enabled == before.outside_alerts and (
            not enabled or (url, fmt) == (before.notify_url, before.notify_format)
        ):
            return {}
        entry = self.config_entry
        loaded = getattr(entry, "runtime_data", None)
        client = (
            loaded.client
            if loaded is not None
            else GatewayClient(
                async_get_clientsession(self.hass), entry.data[CONF_URL], entry.data[CONF_TOKEN]
            )
        )
        try:
            if enabled:
                await client.set_notify(url, fmt)
            else:
                await client.clear_notify()
        except GatewayAuthError:
            return {"base": "invalid_auth"}
        except GatewayNotFoundError:
            return {"base": "gateway_too_old"}
        except GatewayUnavailableError as err:
            LOGGER.debug("%s: cannot reach the gateway for the outside alerts: %s", entry.title, err.message)
            return {"base": "cannot_connect"}
        except GatewayError as err:
            return {
                CONF_NOTIFY_URL: "notify_url_forbidden"
                if err.code == "forbidden_address"
                else "invalid_notify_url"
            }
        LOGGER.info(
            "%s: outside alerts %s", entry.title, f"to {redact_notify_url(url)} ({fmt})" if enabled else "off"
        )
        return {}

    async def async_step_contents(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """On a Supervisor install: the add-ons and folders a backup holds."""
        errors: dict[str, str] = {}
        if user_input is not None:
            return self.async_create_entry(
                data=self._chosen
                | {
                    CONF_ADDONS: list(user_input.get(CONF_ADDONS, [])),
                    CONF_FOLDERS: list(user_input.get(CONF_FOLDERS, [])),
                }
            )
        try:
            addons = await installed_addons(self.hass)
        except Exception as err:
            LOGGER.warning("Cannot list the installed add-ons: %s", err)
            addons = {}
            errors["base"] = "supervisor_unavailable"
        chosen = [slug for slug in self._chosen[CONF_ADDONS] if slug in addons]
        return self.async_show_form(
            step_id="contents",
            data_schema=self.add_suggested_values_to_schema(
                vol.Schema(
                    {
                        vol.Optional(CONF_ADDONS): SelectSelector(
                            SelectSelectorConfig(
                                options=[
                                    SelectOptionDict(value=slug, label=name) for slug, name in addons.items()
                                ],
                                multiple=True,
                                mode=SelectSelectorMode.LIST,
                            )
                        ),
                        vol.Optional(CONF_FOLDERS): SelectSelector(
                            SelectSelectorConfig(
                                options=list(FOLDERS),
                                multiple=True,
                                translation_key=CONF_FOLDERS,
                                mode=SelectSelectorMode.LIST,
                            )
                        ),
                    }
                ),
                {CONF_ADDONS: chosen, CONF_FOLDERS: self._chosen[CONF_FOLDERS]},
            ),
            errors=errors,
        )


async def installed_addons(hass: HomeAssistant) -> dict[str, str]:
    """The Supervisor's installed add-ons: slug → name, by name."""
    from homeassistant.components.hassio import get_supervisor_client  # noqa: PLC0415 - Supervisor installs only

    addons = await get_supervisor_client(hass).addons.list()
    return {addon.slug: addon.name for addon in sorted(addons, key=lambda addon: addon.name.casefold())}
