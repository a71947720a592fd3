"""Settings: defaults, validation naming the variable, units, TOML file under the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from offsite_gateway.config import GIB, MIB, ConfigError, Settings, load_settings, parse_size

REQUIRED = {
    "OFFSITE_GATEWAY_S3_BUCKET": "backups",
    "OFFSITE_GATEWAY_S3_ACCESS_KEY": "access",
    "OFFSITE_GATEWAY_S3_SECRET_KEY": "very-secret",
}


def test_defaults() -> None:
    settings = load_settings(REQUIRED)
    assert settings == Settings(s3_bucket="backups", s3_access_key="access", s3_secret_key="very-secret")
    assert settings.listen == "127.0.0.1:8780"
    assert settings.url_ttl == 900
    assert settings.part_size == 20 * MIB
    assert settings.max_backup_bytes == 50 * GIB
    assert settings.retention == 7
    assert settings.sweep_interval == 600
    assert settings.stale_upload_after == 6 * 3600
    assert settings.init_rate == 60
    assert settings.s3_addressing == "path"
    assert settings.presign_endpoint is None
    assert "very-secret" not in repr(settings)


def test_everything_set() -> None:
    settings = load_settings(
        {
            **REQUIRED,
            "OFFSITE_GATEWAY_LISTEN": "0.0.0.0:9000",
            "OFFSITE_GATEWAY_DB": "/data/gw.db",
            "OFFSITE_GATEWAY_S3_ENDPOINT": "http://minio:9000/",
            "OFFSITE_GATEWAY_S3_PUBLIC_ENDPOINT": "https://s3.example.org",
            "OFFSITE_GATEWAY_S3_REGION": "eu-west-3",
            "OFFSITE_GATEWAY_S3_ADDRESSING": "Virtual",
            "OFFSITE_GATEWAY_S3_PREFIX": "/offsite/",
            "OFFSITE_GATEWAY_URL_TTL": "60",
            "OFFSITE_GATEWAY_PART_SIZE": "64MiB",
            "OFFSITE_GATEWAY_MAX_BACKUP_BYTES": "1 TiB",
            "OFFSITE_GATEWAY_RETENTION": "3",
            "OFFSITE_GATEWAY_RETENTION_MONTHLY": "12",
            "OFFSITE_GATEWAY_STALE_UPLOAD_AFTER": "3600",
            "OFFSITE_GATEWAY_SWEEP_INTERVAL": "0",
            "OFFSITE_GATEWAY_INIT_RATE": "5",
            "OFFSITE_GATEWAY_LOG_LEVEL": "debug",
            "UNRELATED": "x",
        }
    )
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 9000)
    assert settings.db == Path("/data/gw.db")
    assert settings.s3_endpoint == "http://minio:9000"
    assert settings.presign_endpoint == "https://s3.example.org"
    assert settings.s3_addressing == "virtual"
    assert settings.s3_prefix == "offsite/"
    assert settings.part_size == 64 * MIB
    assert settings.max_backup_bytes == 1024 * GIB
    assert (settings.retention, settings.retention_monthly) == (3, 12)
    assert (settings.sweep_interval, settings.init_rate, settings.log_level) == (0, 5, "DEBUG")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LISTEN", "8780"),
        ("LISTEN", "127.0.0.1:http"),
        ("LISTEN", "127.0.0.1:70000"),
        ("LISTEN", "bad host!:80"),
        ("S3_ENDPOINT", "minio:9000"),
        ("S3_ENDPOINT", "http://minio:9000/?x=1"),
        ("S3_PUBLIC_ENDPOINT", "ftp://x"),
        ("S3_BUCKET", "Not_A_Bucket"),
        ("S3_ADDRESSING", "dns"),
        ("S3_PREFIX", "a b"),
        ("URL_TTL", "0"),
        ("URL_TTL", "ten"),
        ("URL_TTL", str(8 * 24 * 3600)),
        ("PART_SIZE", "1MiB"),
        ("PART_SIZE", "6GiB"),
        ("PART_SIZE", "20 parsecs"),
        ("MAX_BACKUP_BYTES", "0"),
        ("MAX_BACKUP_BYTES", "6TiB"),
        ("RETENTION", "-1"),
        ("RETENTION_WEEKLY", "many"),
        ("QUOTA", "lots"),
        ("PROTECT_DAYS", "-1"),
        ("OBJECT_LOCK", "maybe"),
        ("PRUNE_FAILED_AFTER", "0"),
        ("RETENTION_MONTHLY", "-1"),
        ("STALE_UPLOAD_AFTER", "0"),
        ("SWEEP_INTERVAL", "-1"),
        ("INIT_RATE", "0"),
        ("LOG_LEVEL", "loud"),
        ("HEADER_TIMEOUT", "0"),
        ("BODY_TIMEOUT", "-1"),
        ("KEEPALIVE_TIMEOUT", "forever"),
        ("MAX_CONNECTIONS", "0"),
        ("AUTH_FAILURES_PER_MINUTE", "-1"),
        ("TRUSTED_PROXIES", "10.0.0.0/8, proxy.example"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"OFFSITE_GATEWAY_{name}=") as info:
        load_settings({**REQUIRED, f"OFFSITE_GATEWAY_{name}": value})
    assert "is invalid" in str(info.value)


def test_policy_defaults() -> None:
    settings = load_settings(
        {
            **REQUIRED,
            "OFFSITE_GATEWAY_QUOTA": "200 GiB",
            "OFFSITE_GATEWAY_RETENTION": "0",
            "OFFSITE_GATEWAY_RETENTION_DAILY": "7",
            "OFFSITE_GATEWAY_PROTECT_DAYS": "14",
            "OFFSITE_GATEWAY_OBJECT_LOCK": "true",
        }
    )
    assert (settings.quota, settings.retention, settings.retention_daily) == (200 * 1024**3, 0, 7)
    assert (settings.protect_days, settings.object_lock) == (14, True)
    assert load_settings({**REQUIRED, "OFFSITE_GATEWAY_QUOTA": "none"}).quota is None
    with pytest.raises(ConfigError, match="retention would keep nothing"):
        load_settings({**REQUIRED, "OFFSITE_GATEWAY_RETENTION": "0"})


@pytest.mark.parametrize("name", ["S3_BUCKET", "S3_ACCESS_KEY", "S3_SECRET_KEY"])
def test_missing_required(name: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != f"OFFSITE_GATEWAY_{name}"}
    with pytest.raises(ConfigError, match=f"OFFSITE_GATEWAY_{name} is required"):
        load_settings(env)
    assert load_settings(env, require_storage=False).db == Path("offsite-gateway.sqlite3")


def test_secrets_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({**REQUIRED, "OFFSITE_GATEWAY_S3_SECRET_KEY": "   "})
    assert "required" in str(info.value)


def test_parse_size() -> None:
    assert parse_size("5242880") == 5 * MIB
    assert parse_size("5m") == 5 * MIB
    assert parse_size("20 MB") == 20 * MIB
    assert parse_size("2GiB") == 2 * GIB
    with pytest.raises(ValueError, match="bytes"):
        parse_size("1.5GiB")


def test_toml_file_with_the_environment_over_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        's3_bucket = "from-file"\ns3_access_key = "a"\ns3_secret_key = "b"\nurl_ttl = 120\nretention = 2\n'
        "object_lock = true\n"
    )
    settings = load_settings({"OFFSITE_GATEWAY_URL_TTL": "30"}, path)
    assert (settings.s3_bucket, settings.url_ttl, settings.retention) == ("from-file", 30, 2)
    assert settings.object_lock is True  # a TOML boolean


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("s3_bucket = ", "not valid TOML"),
        ("colour = 'blue'", "unknown setting 'colour'"),
        (
            "retention = true\ns3_bucket='abc'\ns3_access_key='a'\ns3_secret_key='b'",
            "RETENTION='true' is invalid",
        ),
        ("retention = 1.5", "retention must be a string, an integer or a boolean"),
        ("retention = [1]", "retention must be a string, an integer or a boolean"),
        ("url_ttl = -4\ns3_bucket='abc'\ns3_access_key='a'\ns3_secret_key='b'", "OFFSITE_GATEWAY_URL_TTL="),
    ],
)
def test_bad_toml_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings({}, path)


def test_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_settings({}, tmp_path / "nope.toml")


def test_connection_and_client_settings() -> None:
    settings = load_settings(REQUIRED)
    assert (settings.header_timeout, settings.body_timeout, settings.keepalive_timeout) == (10, 30, 20)
    assert (settings.max_connections, settings.auth_failures_per_minute, settings.trusted_proxies) == (
        4096,
        100,
        (),
    )
    settings = load_settings(
        {
            **REQUIRED,
            "OFFSITE_GATEWAY_HEADER_TIMEOUT": "5",
            "OFFSITE_GATEWAY_BODY_TIMEOUT": "60",
            "OFFSITE_GATEWAY_KEEPALIVE_TIMEOUT": "30",
            "OFFSITE_GATEWAY_MAX_CONNECTIONS": "100",
            "OFFSITE_GATEWAY_AUTH_FAILURES_PER_MINUTE": "0",
            "OFFSITE_GATEWAY_TRUSTED_PROXIES": "127.0.0.1, 10.1.2.3/8 fd00::/8",
        }
    )
    assert (settings.header_timeout, settings.body_timeout, settings.keepalive_timeout) == (5, 60, 30)
    assert (settings.max_connections, settings.auth_failures_per_minute) == (100, 0)
    assert [str(network) for network in settings.trusted_proxies] == [
        "127.0.0.1/32",
        "10.0.0.0/8",
        "fd00::/8",
    ]
