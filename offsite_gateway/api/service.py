"""The routes that are not the API's: liveness, readiness, Prometheus metrics, and a page for people."""

from __future__ import annotations

import hmac

from aiohttp import web

from ..metrics import CONTENT_TYPE_LATEST
from .keys import METRICS, METRICS_ONLY, READINESS, SETTINGS, STORE
from .middlewares import refuse_throttled, unauthorized


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. It touches nothing and reveals nothing."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database and storage answer (probed at most every few seconds; details in the log)."""
    checks = await request.app[READINESS].check()
    answer = {name: "ok" if ok else "unavailable" for name, ok in checks.items()}
    if all(checks.values()):
        return web.json_response({"status": "ok", "checks": answer})
    return web.json_response({"status": "unavailable", "checks": answer}, status=503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text: on the metrics listener (`METRICS_LISTEN`) if there is one, else on the API's listener
    behind `METRICS_TOKEN`; with neither, not served (404, as for any route that is not there). Wherever it is
    served, `METRICS_TOKEN` (if set) is required, and wrong ones count as wrong tokens (throttled)."""
    app = request.app
    settings = app[SETTINGS]
    here = app.get(METRICS_ONLY, False) or (settings.metrics_listen is None and settings.metrics_token)
    if not here:
        raise web.HTTPNotFound()
    if settings.metrics_token is not None:
        refuse_throttled(request)
        sent = request.headers.get("Authorization", "")
        scheme, _, given = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), settings.metrics_token.encode()
        ):
            raise unauthorized(request)
    app_metrics = app[METRICS]
    app_metrics.uploads_in_progress.set(await app[STORE].count_uploading())
    for check, ok in (await app[READINESS].check()).items():
        app_metrics.check_up.labels(check).set(1 if ok else 0)
    response = web.Response(body=app_metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


DOCS_URL = "https://github.com/offsite-backup/offsite-backup"
ROOT_PAGE = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Offsite Backup gateway</title></head>
<body>
<h1>Offsite Backup gateway</h1>
<p>This server sends Home Assistant's backups off-site: Home Assistant talks to it with the token its operator
gave it. There is nothing else to see here.</p>
<p><a href="{DOCS_URL}">Offsite Backup's documentation</a></p>
</body>
</html>
""".encode()
ROOT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


async def root(request: web.Request) -> web.Response:
    """A page for people who open the gateway's address (Home Assistant's device page links it): what it is and
    where its documentation is; no version, nothing of its configuration or state."""
    return web.Response(body=ROOT_PAGE, content_type="text/html", charset="utf-8", headers=ROOT_HEADERS)
