"""The gateway's HTTP API v1 (docs/api-v1.md, offsite_gateway/openapi.yaml) over aiohttp's web layer: what the
application and each request hold (`keys`), request bodies (`bodies`), answers (`answers`), the middlewares, and the
routes (`routes`: `backups`, `instance`, `service`), whose handlers parse, call the domain (`offsite_gateway.domain`)
and answer. `offsite_gateway.app` puts them together."""
