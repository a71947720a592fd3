"""offsite_gateway/openapi.yaml is valid, names exactly the app's routes, and describes what the app answers."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from offsite_gateway.app import STORE, create_app
from offsite_gateway.config import load_settings
from tests.gateway.api import Api, put
from tests.helpers.gateway import RunningGateway

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(files("offsite_gateway").joinpath("openapi.yaml").read_text())
    return document


def test_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_routes_match_the_document(spec: dict[str, Any], tmp_path: Path) -> None:
    settings = load_settings(
        {
            "OFFSITE_GATEWAY_S3_BUCKET": "bucket",
            "OFFSITE_GATEWAY_S3_ACCESS_KEY": "a",
            "OFFSITE_GATEWAY_S3_SECRET_KEY": "b",
            "OFFSITE_GATEWAY_DB": str(tmp_path / "db"),
        }
    )
    app = create_app(settings)
    served = {(route.method, route.resource.canonical) for route in app.router.routes() if route.resource}
    documented = {
        (method.upper(), path) for path, item in spec["paths"].items() for method in item if method in METHODS
    }
    assert served == documented


def _resolve(node: Any, spec: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolve(target, spec)
        return {key: _resolve(value, spec) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, spec) for item in node]
    return node


def _check(spec: dict[str, Any], method: str, template: str, status: int, body: Any) -> None:
    operation = spec["paths"][template][method.lower()]
    response = _resolve(operation["responses"][str(status)], spec)
    if body is None:
        assert "content" not in response, (method, template, status)
        return
    schema = response["content"]["application/json"]["schema"]
    OAS31Validator(schema).validate(body)


async def test_answers_follow_the_document(
    spec: dict[str, Any], gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    _, token = await gateway.add_instance("home")
    api = Api(session, gateway.url, token)

    async def call(method: str, template: str, backup_id: str = "", body: Any = None) -> Any:
        status, answer = await api.call(method, template.replace("{id}", backup_id), body)
        _check(spec, method, template, status, answer)
        return status, answer

    await call("GET", "/v1/instance")
    # The house's notify URL: set (a public address literal: checked, never connected to), refused, cleared.
    await call("PUT", "/v1/instance/notify", body={"url": "https://93.184.215.14/topic", "format": "ntfy"})
    _, info = await call("GET", "/v1/instance")
    assert info["watch"]["notify"] == {"url": "https://93.184.215.14/…", "format": "ntfy"}
    _, refused = await call("PUT", "/v1/instance/notify", body={"url": "http://127.0.0.1:9/x"})  # 400
    assert refused["error"]["code"] == "forbidden_address"
    await call("PUT", "/v1/instance/notify", body={"url": "ftp://example.com"})  # 400
    await call("DELETE", "/v1/instance/notify")
    data = os.urandom(100)
    _, init = await call("POST", "/v1/backups", body={"name": "n", "size": len(data), "metadata": {"a": 1}})
    backup_id = init["id"]
    _, conflict = await call("POST", "/v1/backups", body={"name": "n", "size": 1})  # 409
    assert conflict["error"]["backup_id"] == backup_id
    await call("POST", "/v1/backups", body={"name": "n", "size": 0})  # 400
    await call("POST", "/v1/backups", body={"name": "n", "size": 10**15})  # 413
    _, signed = await call("POST", "/v1/backups/{id}/parts", backup_id, {"part_numbers": [1]})
    await call("POST", "/v1/backups/{id}/parts", backup_id, {"part_numbers": [2]})  # 400
    etag = await put(session, signed["parts"][0]["url"], data)
    await call("GET", "/v1/backups/{id}/parts", backup_id)
    await call("GET", "/v1/backups/{id}", backup_id)
    await call("POST", "/v1/backups/{id}/download", backup_id)  # 409
    await call("POST", "/v1/backups/{id}/complete", backup_id, {"parts": [{"part_number": 1, "etag": etag}]})
    await call("GET", "/v1/backups")
    await call("GET", "/v1/backups/{id}", "nope")  # 404
    await call("POST", "/v1/backups/{id}/download", backup_id)
    await call("DELETE", "/v1/backups/{id}/upload", backup_id)  # 409
    await call("DELETE", "/v1/backups/{id}", backup_id)
    _, second = await call("POST", "/v1/backups", body={"name": "n", "size": 10})
    await call("DELETE", "/v1/backups/{id}/upload", second["id"])
    # The instance's policy: a quota (413 with its numbers), delete protection (403 with the date).
    await gateway.app[STORE].set_policy("home", {"quota_bytes": 1000, "protect_days": 1})
    _, third = await call("POST", "/v1/backups", body={"name": "n", "size": len(data)})
    _, signed = await call("POST", "/v1/backups/{id}/parts", third["id"], {"part_numbers": [1]})
    etag = await put(session, signed["parts"][0]["url"], data)
    await call(
        "POST", "/v1/backups/{id}/complete", third["id"], {"parts": [{"part_number": 1, "etag": etag}]}
    )
    _, info = await call("GET", "/v1/instance")
    assert info["usage"] == {"bytes": 100, "backups": 1, "quota_bytes": 1000}
    _, refused = await call("POST", "/v1/backups", body={"name": "n", "size": 901})  # 413
    assert refused["error"]["used_bytes"] == 100
    _, protected = await call("DELETE", "/v1/backups/{id}", third["id"])  # 403
    assert protected["error"]["code"] == "protected"
    api.token = "wrong"
    await call("GET", "/v1/backups")  # 401
    for route in ("/healthz", "/readyz"):
        status, health = await api.call("GET", route)
        _check(spec, "GET", route, status, health)
    for _ in range(200):  # wrong tokens, until this address is refused
        status, answer = await api.call("GET", "/v1/instance")
        if status == 429:
            break
    _check(spec, "GET", "/v1/instance", status, answer)
    assert answer["error"]["code"] == "rate_limited"
