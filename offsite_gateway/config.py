"""The gateway's configuration: environment variables, optionally a TOML file with the same keys in lower case.

Every setting is `OFFSITE_GATEWAY_<NAME>` in the environment, or `<name>` (lower case) in the TOML file given with
`--config`; the environment wins over the file. A missing or invalid setting raises `ConfigError` naming the
variable, and `offsite-gateway serve` exits with that message.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PREFIX = "OFFSITE_GATEWAY_"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

# S3's own limits: parts of 5 MiB to 5 GiB (the last may be smaller), at most 10,000 parts, objects up to 5 TiB.
S3_MIN_PART_SIZE = 5 * MIB
S3_MAX_PART_SIZE = 5 * GIB
S3_MAX_PARTS = 10_000
S3_MAX_OBJECT_SIZE = 5 * TIB


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class PostgresDatabase:
    """`OFFSITE_GATEWAY_DB` as a `postgresql://` URL: the gateway's state in PostgreSQL (several nodes)."""

    url: str = field(repr=False)

    @property
    def redacted(self) -> str:
        """The URL without its password (what logs and `repr` show)."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        userinfo, host = parts.netloc.rsplit("@", 1)
        return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))

    def __repr__(self) -> str:
        return f"PostgresDatabase({self.redacted!r})"


@dataclass(frozen=True)
class Settings:
    """The gateway's parsed configuration."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8780
    db: Path | PostgresDatabase = Path("offsite-gateway.sqlite3")
    db_pool_size: int = 10
    db_timeout: int = 10
    s3_endpoint: str | None = None
    s3_public_endpoint: str | None = None
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: str = field(default="", repr=False)
    s3_secret_key: str = field(default="", repr=False)
    s3_addressing: str = "path"
    s3_prefix: str = ""
    url_ttl: int = 900
    part_size: int = 20 * MIB
    max_parts: int = S3_MAX_PARTS  # parts per upload at most: 1,000 on Scaleway (offsite_gateway/parts.py)
    max_backup_bytes: int = 50 * GIB
    # Each instance's policy unless the operator set its own (`instance set`): see offsite_gateway/policy.py.
    quota: int | None = None  # bytes an instance may hold in storage; None: no quota
    retention: int = 7  # keep-last
    retention_daily: int = 0
    retention_weekly: int = 0
    retention_monthly: int = 0
    protect_days: int = 0
    object_lock: bool = False
    stale_upload_after: int = 6 * 3600
    prune_failed_after: int = 7 * 24 * 3600
    sweep_interval: int = 600
    init_rate: int = 60
    log_level: str = "INFO"
    # Connections (offsite_gateway/server.py): what an idle, slow or crowded client may hold.
    header_timeout: int = 10
    body_timeout: int = 30
    write_timeout: int = 30
    keepalive_timeout: int = 20
    max_connections: int = 4096
    # Wrong tokens per source address and minute before that address gets 429 (0: never).
    auth_failures_per_minute: int = 100
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # The watchdog (offsite_gateway/watchdog.py): missed-backup alerts, to the operator and to each house.
    expect_every: int = 36 * 3600  # seconds between backups an instance is expected to keep; 0: not watched
    remind_every: int = 24 * 3600  # a late instance is notified again this often; 0: once only
    watch_interval: int = 300  # seconds between two looks at every instance; 0 turns its timers off
    notify_url: str | None = field(
        default=None, repr=False
    )  # the operator's webhook (its path may be secret)
    notify_format: str = "json"  # json, ntfy or gotify
    notify_secret: str | None = field(default=None, repr=False)  # HMAC-SHA256 key of the operator's webhooks
    notify_email: tuple[str, ...] = ()  # the operator's addresses (with an SMTP server)
    notify_allowed_networks: tuple[IPNetwork, ...] = ()  # private addresses webhooks may still reach
    notify_timeout: int = 10  # seconds a webhook (or an SMTP exchange) may take
    notify_attempts: int = 10  # tries of one notification before it is given up
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_security: str = "starttls"  # starttls, tls or none
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_from: str = "offsite-gateway@localhost"
    storage_quota: int | None = None  # bytes the bucket may hold (the provider's plan): a gauge for an alert
    # /metrics: on a listener of its own (host, port), and/or behind a token; with neither, not served.
    metrics_listen: tuple[str, int] | None = None
    metrics_token: str | None = field(default=None, repr=False)

    @property
    def listen(self) -> str:
        """`host:port` as configured."""
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def presign_endpoint(self) -> str | None:
        """The base URL put in presigned URLs: the public endpoint if set, else the storage endpoint."""
        return self.s3_public_endpoint or self.s3_endpoint


_SIZE_RE = re.compile(r"^\s*(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": KIB, "m": MIB, "g": GIB, "t": TIB}


def parse_size(text: str) -> int:
    """Parse a byte count: plain digits, or with a binary unit (`20MiB`, `50 GiB`, `5m`)."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError("expected a number of bytes, optionally with a unit such as MiB or GiB")
    unit = match.group(2).lower()[:1]
    return int(match.group(1)) * _SIZE_UNITS[unit]


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
        _check_range(value, low, high)
        return value

    return parse


def _size_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_size(text)
        _check_range(value, low, high)
        return value

    return parse


def _check_range(value: int, low: int, high: int | None) -> None:
    if value < low:
        raise ValueError(f"must be at least {low}")
    if high is not None and value > high:
        raise ValueError(f"must be at most {high}")


def _url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or a fragment")
    return text.strip().rstrip("/")


def _database(text: str) -> Path | PostgresDatabase:
    """A SQLite file, or a `postgresql://user:password@host:port/database` URL."""
    value = _non_empty(text)
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if not scheme:
        return Path(value)
    if scheme not in POSTGRES_SCHEMES:
        raise ValueError("expected a SQLite file path or a postgresql:// URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("expected postgresql://user:password@host:port/database") from None
    if not parts.path.strip("/") and "dbname=" not in parts.query:
        raise ValueError("the URL must name a database: postgresql://user:password@host:port/database")
    return PostgresDatabase(value)


def _quota(text: str) -> int | None:
    """A size, or `none` / `0`: no quota."""
    if text.strip().lower() in ("none", "0"):
        return None
    value = parse_size(text)
    _check_range(value, 1, None)
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def _bucket(text: str) -> str:
    if not _BUCKET_RE.match(text.strip()):
        raise ValueError("expected an S3 bucket name (3-63 lower-case letters, digits, dots and hyphens)")
    return text.strip()


def _addressing(text: str) -> str:
    value = text.strip().lower()
    if value not in ("path", "virtual"):
        raise ValueError("expected path or virtual")
    return value


def _prefix(text: str) -> str:
    value = text.strip().strip("/")
    if not value:
        return ""
    if not re.match(r"^[A-Za-z0-9!\-_.*'()/]+$", value):
        raise ValueError("may contain only letters, digits, / and !-_.*'()")
    return value + "/"


def _log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def _listen(text: str) -> tuple[str, int]:
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError("expected host:port, e.g. 127.0.0.1:8780")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9.\-]+$", host):
            raise ValueError("expected host:port, e.g. 127.0.0.1:8780") from None
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError("the port must be a number") from None
    _check_range(port, 0, 65535)
    return host, port


_DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
MAX_DURATION = 366 * 86_400


def parse_duration(text: str) -> int:
    """Seconds from `90m`, `36h`, `2d`, `1w` or plain seconds; `off` (or `0`) is 0."""
    if text.strip().lower() in ("off", "0"):
        return 0
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError("expected a duration such as 36h, 2d or 90m (or off)")
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    _check_range(seconds, 1, MAX_DURATION)
    return seconds


def _notify_url(text: str) -> str:
    """The operator's webhook: an http(s) URL; its path and query may hold a secret (never printed)."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    if parts.username is not None or parts.fragment:
        raise ValueError("must not have a user name or a fragment")
    return text.strip()


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"expected {', '.join(choices[:-1])} or {choices[-1]}")
        return value

    return parse


_EMAIL_RE = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+$")


def _emails(text: str) -> tuple[str, ...]:
    addresses = tuple(item for item in re.split(r"[\s,;]+", text.strip()) if item)
    for address in addresses:
        if not _EMAIL_RE.match(address):
            raise ValueError(f"{address!r} is not an e-mail address")
    return addresses


def _email(text: str) -> str:
    addresses = _emails(text)
    if len(addresses) != 1:
        raise ValueError("expected one e-mail address")
    return addresses[0]


_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")


def _metrics_token(text: str) -> str:
    value = text.strip()
    if not _TOKEN_RE.match(value):
        raise ValueError(
            "expected 16 to 512 letters, digits or ._~+/=- (e.g. the output of `openssl rand -hex 32`)"
        )
    return value


def _networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in re.split(r"[\s,]+", text.strip()):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.0/8)") from None
    return tuple(networks)


# name → (parser, required for serving)
_PARSERS: dict[str, tuple[Callable[[str], Any], bool]] = {
    "LISTEN": (_listen, False),
    "DB": (_database, False),
    "DB_POOL_SIZE": (_int_in(1, 1000), False),
    "DB_TIMEOUT": (_int_in(1, 3600), False),
    "S3_ENDPOINT": (_url, False),
    "S3_PUBLIC_ENDPOINT": (_url, False),
    "S3_BUCKET": (_bucket, True),
    "S3_REGION": (_non_empty, False),
    "S3_ACCESS_KEY": (_non_empty, True),
    "S3_SECRET_KEY": (_non_empty, True),
    "S3_ADDRESSING": (_addressing, False),
    "S3_PREFIX": (_prefix, False),
    "URL_TTL": (_int_in(1, 7 * 24 * 3600), False),
    "PART_SIZE": (_size_in(S3_MIN_PART_SIZE, S3_MAX_PART_SIZE), False),
    "MAX_PARTS": (_int_in(1, S3_MAX_PARTS), False),
    "MAX_BACKUP_BYTES": (_size_in(1, S3_MAX_OBJECT_SIZE), False),
    "QUOTA": (_quota, False),
    "RETENTION": (_int_in(0, 10_000), False),
    "RETENTION_DAILY": (_int_in(0, 10_000), False),
    "RETENTION_WEEKLY": (_int_in(0, 10_000), False),
    "RETENTION_MONTHLY": (_int_in(0, 1200), False),
    "PROTECT_DAYS": (_int_in(0, 36_500), False),
    "OBJECT_LOCK": (_boolean, False),
    "STALE_UPLOAD_AFTER": (_int_in(1), False),
    "PRUNE_FAILED_AFTER": (_int_in(1), False),
    "SWEEP_INTERVAL": (_int_in(0), False),
    "INIT_RATE": (_int_in(1), False),
    "LOG_LEVEL": (_log_level, False),
    "HEADER_TIMEOUT": (_int_in(1, 3600), False),
    "BODY_TIMEOUT": (_int_in(1, 3600), False),
    "WRITE_TIMEOUT": (_int_in(1, 3600), False),
    "KEEPALIVE_TIMEOUT": (_int_in(1, 3600), False),
    "MAX_CONNECTIONS": (_int_in(1, 1_000_000), False),
    "AUTH_FAILURES_PER_MINUTE": (_int_in(0), False),
    "TRUSTED_PROXIES": (_networks, False),
    "EXPECT_EVERY": (parse_duration, False),
    "REMIND_EVERY": (parse_duration, False),
    "WATCH_INTERVAL": (_int_in(0, 86_400), False),
    "NOTIFY_URL": (_notify_url, False),
    "NOTIFY_FORMAT": (_choice("json", "ntfy", "gotify"), False),
    "NOTIFY_SECRET": (_non_empty, False),
    "NOTIFY_EMAIL": (_emails, False),
    "NOTIFY_ALLOWED_NETWORKS": (_networks, False),
    "NOTIFY_TIMEOUT": (_int_in(1, 300), False),
    "NOTIFY_ATTEMPTS": (_int_in(1, 100), False),
    "SMTP_HOST": (_non_empty, False),
    "SMTP_PORT": (_int_in(1, 65535), False),
    "SMTP_SECURITY": (_choice("starttls", "tls", "none"), False),
    "SMTP_USER": (_non_empty, False),
    "SMTP_PASSWORD": (_non_empty, False),
    "SMTP_FROM": (_email, False),
    "STORAGE_QUOTA": (_quota, False),
    "METRICS_LISTEN": (_listen, False),
    "METRICS_TOKEN": (_metrics_token, False),
}

SETTING_NAMES = tuple(_PARSERS)


def read_config_file(path: Path) -> dict[str, str]:
    """Read a TOML file whose keys are the settings' names in lower case; values become strings."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read the file: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--config {path}: not valid TOML: {err}") from None
    values: dict[str, str] = {}
    for key, value in data.items():
        name = key.upper()
        if name not in _PARSERS:
            raise ConfigError(f"--config {path}: unknown setting {key!r}")
        if not isinstance(value, str | int):  # a bool is an int: `object_lock = true` reads as "true"
            raise ConfigError(f"--config {path}: {key} must be a string, an integer or a boolean")
        values[PREFIX + name] = str(value).lower() if isinstance(value, bool) else str(value)
    return values


def load_settings(
    env: Mapping[str, str], config_file: Path | None = None, *, require_storage: bool = True
) -> Settings:
    """Build the settings from the environment (and a TOML file under it).

    `require_storage=False` is for the commands that only touch the database (`instance ...`).
    """
    source: dict[str, str] = read_config_file(config_file) if config_file is not None else {}
    source.update({key: value for key, value in env.items() if key.startswith(PREFIX)})
    values: dict[str, Any] = {}
    for name, (parser, required) in _PARSERS.items():
        variable = PREFIX + name
        raw = source.get(variable)
        if raw is None or (raw.strip() == "" and name not in ("S3_PREFIX", "TRUSTED_PROXIES")):
            if required and require_storage:
                raise ConfigError(f"{variable} is required but not set")
            continue
        try:
            values[name] = parser(raw)
        except ValueError as err:
            raise ConfigError(f"{variable}={_shown(name, raw)} is invalid: {err}") from None
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name == "LISTEN":
            kwargs["listen_host"], kwargs["listen_port"] = value
        else:
            kwargs[name.lower()] = value
    settings = Settings(**kwargs)
    if settings.max_backup_bytes > settings.max_parts * S3_MAX_PART_SIZE:
        raise ConfigError(
            f"{PREFIX}MAX_BACKUP_BYTES={settings.max_backup_bytes} does not fit in {PREFIX}MAX_PARTS="
            f"{settings.max_parts} parts of at most 5 GiB (S3's largest part): lower MAX_BACKUP_BYTES to "
            f"{settings.max_parts * S3_MAX_PART_SIZE // GIB} GiB or less, or raise MAX_PARTS"
        )
    if settings.metrics_listen == (settings.listen_host, settings.listen_port) and settings.listen_port:
        raise ConfigError(f"{PREFIX}METRICS_LISTEN must be another address than {PREFIX}LISTEN")
    if not (
        settings.retention
        or settings.retention_daily
        or settings.retention_weekly
        or settings.retention_monthly
    ):
        raise ConfigError(
            f"{PREFIX}RETENTION, _DAILY, _WEEKLY and _MONTHLY are all 0: retention would keep nothing"
        )
    if settings.notify_url and settings.notify_format == "json" and not settings.notify_secret:
        raise ConfigError(
            f"{PREFIX}NOTIFY_URL sends signed JSON: set {PREFIX}NOTIFY_SECRET, the key its receiver checks "
            "the signature with (or choose NOTIFY_FORMAT=ntfy or gotify)"
        )
    if settings.notify_email and not settings.smtp_host:
        raise ConfigError(f"{PREFIX}NOTIFY_EMAIL needs an SMTP server: set {PREFIX}SMTP_HOST")
    return settings


def _shown(name: str, raw: str) -> str:
    """Never echo a secret back in an error message."""
    if name == "DB" and "://" in raw:
        return "<a URL, hidden: it may hold a password>"
    if name == "NOTIFY_URL":
        return "<a URL, hidden: its path may be secret>"
    secret = name in ("S3_SECRET_KEY", "S3_ACCESS_KEY", "NOTIFY_SECRET", "SMTP_PASSWORD", "METRICS_TOKEN")
    return "<hidden>" if secret else repr(raw)
