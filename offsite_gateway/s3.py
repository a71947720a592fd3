"""A lean S3 REST client: SigV4 header-signed requests (botocore's signer) sent with aiohttp's client, answers
read with ElementTree.

The gateway makes a handful of S3 calls per backup (CreateMultipartUpload, ListParts, CompleteMultipartUpload,
PutObject of the manifest). Through aiobotocore each cost 2 to 3.5 ms of CPU, mostly botocore's per-call machinery
(endpoint rules, hooks, user agent, serialisers, parsers; profiled with bench/night.py). This client builds each
request itself (its canonical form is tested to be the one botocore would sign), has botocore's `S3SigV4Auth` sign
it, and parses the few answers it needs. The HTTP is aiohttp's: one `ClientSession` per process (per `S3Client`),
on a `TCPConnector` that keeps connections alive (`KEEPALIVE` seconds idle), holds at most `pool_size` at once,
caches DNS answers, and sends no cookies.

- Endpoint and addressing as botocore does: path style, or virtual-host style except on an IP address endpoint;
  AWS's regional endpoint when none is given.
- Every attempt has deadlines (connecting 5 s, each read 60 s, the whole exchange 120 s); a request is retried on
  connection errors, timeouts, 5xx and 429/SlowDown: 3 attempts, jittered backoff (as botocore's standard retry
  mode).
- An error answer becomes `S3Error(status, code, message)`; CompleteMultipartUpload's "200 with an <Error> body"
  too. A HEAD error has no body: its code is the status (`"404"`), as botocore reports it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import aiohttp
from botocore.auth import S3SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]
from yarl import URL

MAX_ATTEMPTS = 3
MAX_ANSWER = 8 * 1024 * 1024  # the largest answer read: a page of 1000 keys or parts is a few hundred KB
RETRY_STATUSES = {429, 500, 502, 503, 504}
RETRY_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=5, sock_read=60)
KEEPALIVE = 15.0  # seconds an idle connection to storage is kept for the next call


class S3Error(Exception):
    """Storage answered an error, or could not be reached (`status` 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code} (HTTP {status}): {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes

    def xml(self) -> ElementTree.Element:
        try:
            # The operator's storage answers, at most MAX_ANSWER bytes; expat (>= 2.4) never loads external
            # entities and limits entity amplification.
            return ElementTree.fromstring(self.body)  # noqa: S314
        except ElementTree.ParseError:
            raise S3Error(
                self.status, "MalformedAnswer", "storage answered something that is not XML"
            ) from None


def local(tag: str) -> str:
    """A tag without its namespace (S3 answers in its namespace; some compatible servers do not)."""
    return tag.rsplit("}", 1)[-1]


def child_text(element: ElementTree.Element, name: str, default: str = "") -> str:
    """The text of the first child named `name` (any namespace)."""
    for item in element:
        if local(item.tag) == name:
            return item.text or ""
    return default


def children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [item for item in element if local(item.tag) == name]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _quote(value: str) -> str:
    """AWS's canonical URI encoding of a query key or value (RFC 3986 unreserved characters kept)."""
    return quote(value, safe="-_.~")


class S3Client:
    """Signed requests to one bucket."""

    def __init__(
        self,
        *,
        endpoint: str | None,
        bucket: str,
        region: str,
        access_key: str,
        secret_key: str,
        addressing: str = "path",
        pool_size: int = 100,
        timeout: aiohttp.ClientTimeout = TIMEOUT,
    ) -> None:
        endpoint = (endpoint or f"https://s3.{region}.amazonaws.com").rstrip("/")
        parts = urlsplit(endpoint)
        base_path = parts.path.rstrip("/")
        if addressing == "virtual" and not _is_ip(parts.hostname or ""):
            # The bucket is in the host name: connections go to it, and its Host header is what is signed.
            self.origin = f"{parts.scheme}://{bucket}.{parts.netloc}"
            self._bucket_url = f"{self.origin}{base_path}/"
            self._object_prefix = self._bucket_url
        else:
            self.origin = f"{parts.scheme}://{parts.netloc}"
            self._bucket_url = f"{self.origin}{base_path}/{bucket}"
            self._object_prefix = self._bucket_url + "/"
        self._credentials = Credentials(access_key, secret_key)
        self._region = region
        self._pool_size = pool_size
        self._timeout = timeout
        # Built once: the signer holds nothing of a request (botocore's own clients keep one per client).
        self._signer = S3SigV4Auth(self._credentials, "s3", self._region)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """The session every call of this client goes through (one per process: the gateway has one client)."""
        connector = aiohttp.TCPConnector(
            limit=self._pool_size,
            limit_per_host=self._pool_size,
            keepalive_timeout=KEEPALIVE,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def url(self, key: str | None, query: Mapping[str, str] | None = None) -> str:
        """The request URL of the bucket (key None) or of an object, with its query canonically encoded."""
        url = self._bucket_url if key is None else self._object_prefix + quote(key, safe="/~")
        if query:
            url += "?" + "&".join(f"{_quote(name)}={_quote(value)}" for name, value in sorted(query.items()))
        return url

    def sign(
        self, method: str, url: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The headers of the request, SigV4-signed by botocore (the payload's SHA-256 signed too: it hashes it)."""
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
        self._signer.add_auth(request)
        return dict(request.headers.items())

    async def request(
        self,
        method: str,
        key: str | None = None,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send a signed request (retried as the module's docstring says); the answer, or S3Error."""
        if self._session is None:
            raise RuntimeError("storage is not open")
        url = self.url(key, query)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                answer = await self._send(self._session, method, url, body, headers)
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                failure = S3Error(
                    0,
                    type(err).__name__,
                    "timed out" if isinstance(err, TimeoutError) else f"{type(err).__name__}: {err}",
                )
            else:
                error = self._error(answer)
                if error is None:
                    return answer
                if answer.status not in RETRY_STATUSES and error.code not in RETRY_CODES:
                    raise error
                failure = error
            if attempt == MAX_ATTEMPTS:
                raise failure
            await asyncio.sleep(random.uniform(0, 0.05 * 2**attempt))  # noqa: S311 - jitter, not a secret
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str] | None,
    ) -> Answer:
        signed = self.sign(method, url, body, headers)
        # Sent as signed: the URL already encoded canonically (yarl must not re-encode it).
        async with session.request(
            method, URL(url, encoded=True), data=body or None, headers=signed, allow_redirects=False
        ) as response:
            too_large = S3Error(response.status, "AnswerTooLarge", f"more than {MAX_ANSWER} bytes")
            if method == "HEAD":
                data = b""
            elif response.content_length is not None and response.content_length > MAX_ANSWER:
                raise too_large
            else:
                buffer = bytearray()
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    if len(buffer) > MAX_ANSWER:
                        raise too_large
                data = bytes(buffer)
            return Answer(
                response.status, {name.lower(): value for name, value in response.headers.items()}, data
            )

    @staticmethod
    def _error(answer: Answer) -> S3Error | None:
        """The error an answer carries: a status of 300 or more, or an <Error> document (even with a 200)."""
        is_error_document = answer.body[:200].lstrip().startswith(b"<") and b"<Error>" in answer.body[:300]
        if answer.status < 300 and not is_error_document:
            return None
        if not answer.body:
            return S3Error(answer.status, str(answer.status), "no details")
        try:
            root = ElementTree.fromstring(answer.body)  # noqa: S314 - see Answer.xml
        except ElementTree.ParseError:
            return S3Error(answer.status, str(answer.status), answer.body[:200].decode(errors="replace"))
        if local(root.tag) != "Error":
            return None if answer.status < 300 else S3Error(answer.status, str(answer.status), "no details")
        return S3Error(
            answer.status,
            child_text(root, "Code") or str(answer.status),
            child_text(root, "Message") or "no message",
        )
