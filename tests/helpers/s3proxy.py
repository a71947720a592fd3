"""A recording proxy in front of an S3 server that can also play a provider's stricter rules.

It runs in the test's event loop (an aiohttp server on a free 127.0.0.1 port, no thread), forwards every request
to the real server unchanged (method, path and query as sent, every header, the Host header included, so SigV4
signatures still verify there), and records each request's method, path, query and headers. Point both the
gateway's `S3_ENDPOINT` and `S3_PUBLIC_ENDPOINT` at it, and every storage call of a backup goes through it: the
gateway's own (header-signed) and the presigned part PUTs and downloads a client sends.

Rules of real providers it can enforce (../shared/research/s3-providers.md), each refusing as the provider does:
- `no_checksums` (Backblaze B2, Hetzner, Ceph RGW ...): a request with an SDK integrity checksum header
  (`x-amz-checksum-*`, `x-amz-sdk-checksum-algorithm`, `x-amz-trailer`, `Content-Encoding: aws-chunked`) gets
  400 InvalidArgument;
- `sigv4_only` (B2, and AWS in every region opened since 2014): a request not signed with SigV4 gets 400;
- `equal_parts` (Cloudflare R2, Mega S4): a CompleteMultipartUpload whose parts are not all the size of the first
  but the last gets 400 InvalidPart;
- `max_parts` (Scaleway: 1,000): an UploadPart numbered above it gets 400 InvalidArgument;
- `no_object_lock` (Cloudflare R2, Garage): the Object Lock API (`?object-lock`, `?retention`) answers 501
  NotImplemented;
- `region` (AWS): a request signed for another region gets 400 AuthorizationHeaderMalformed, naming the right one.

    async with S3Proxy(seaweedfs_server.endpoint, no_checksums=True, equal_parts=True) as proxy:
        ...  # proxy.endpoint; proxy.requests; proxy.refused
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiohttp import web
from yarl import URL

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}
CHECKSUM_HEADER = re.compile(r"^(x-amz-checksum-.*|x-amz-sdk-checksum-algorithm|x-amz-trailer)$")


@dataclass(frozen=True)
class Recorded:
    """One request as the proxy received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    status: int = 0

    @property
    def presigned(self) -> bool:
        return "X-Amz-Signature" in self.query

    @property
    def operation(self) -> str:
        """The S3 operation's name, from the method and the query (enough for the calls the gateway makes)."""
        q, m = self.query, self.method
        bucket_level = self.path.strip("/").count("/") == 0
        if m == "PUT" and "partNumber" in q:
            return "UploadPart"
        if m == "PUT" and "retention" in q:
            return "PutObjectRetention"
        if m == "PUT" and bucket_level:
            return "CreateBucket"
        if m == "PUT":
            return "PutObject"
        if m == "POST" and "uploads" in q:
            return "CreateMultipartUpload"
        if m == "POST" and "uploadId" in q:
            return "CompleteMultipartUpload"
        if m == "POST" and "delete" in q:
            return "DeleteObjects"
        if m == "DELETE" and "uploadId" in q:
            return "AbortMultipartUpload"
        if m == "DELETE" and "versionId" in q:
            return "DeleteObjectVersion"
        if m == "DELETE":
            return "DeleteObject"
        if m == "HEAD":
            return "HeadBucket" if bucket_level else "HeadObject"
        if m == "GET" and "uploadId" in q:
            return "ListParts"
        if m == "GET" and "uploads" in q:
            return "ListMultipartUploads"
        if m == "GET" and "versions" in q:
            return "ListObjectVersions"
        for name, operation in (
            ("versioning", "GetBucketVersioning"),
            ("object-lock", "GetObjectLockConfiguration"),
            ("lifecycle", "GetBucketLifecycleConfiguration"),
            ("list-type", "ListObjectsV2"),
        ):
            if m == "GET" and name in q:
                return operation
        return "GetObject" if m == "GET" and not bucket_level else f"{m} {self.path}"

    def checksum_headers(self) -> list[str]:
        """The SDK integrity-checksum headers this request carries (none is the rule)."""
        found = [name for name in self.headers if CHECKSUM_HEADER.match(name)]
        if "aws-chunked" in self.headers.get("content-encoding", ""):
            found.append("content-encoding: aws-chunked")
        return found

    def sigv4(self) -> bool:
        """Signed with SigV4: an `AWS4-HMAC-SHA256` Authorization header or query signature."""
        if self.presigned:
            return self.query.get("X-Amz-Algorithm") == "AWS4-HMAC-SHA256" and "Signature" not in self.query
        return self.headers.get("authorization", "").startswith("AWS4-HMAC-SHA256 Credential=")


@dataclass
class S3Proxy:
    upstream: str
    no_checksums: bool = False
    sigv4_only: bool = False
    equal_parts: bool = False
    max_parts: int | None = None
    no_object_lock: bool = False
    region: str | None = None
    requests: list[Recorded] = field(default_factory=list)
    refused: list[tuple[Recorded, str]] = field(default_factory=list)
    endpoint: str = ""
    _part_sizes: dict[str, dict[int, int]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> S3Proxy:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.endpoint = f"http://{host}:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def part_sizes(self, upload_id: str) -> dict[int, int]:
        """The length of each part storage took for the upload (part number -> bytes)."""
        return dict(self._part_sizes.get(upload_id, {}))

    def operations(self) -> set[str]:
        return {request.operation for request in self.requests}

    def _refusal(self, request: Recorded, body: bytes) -> tuple[str, str] | None:
        """(code, message) of the provider rule the request breaks, if any."""
        if self.no_checksums and request.checksum_headers():
            return "InvalidArgument", f"unsupported header {request.checksum_headers()[0]}"
        if self.sigv4_only and not request.sigv4():
            return "InvalidRequest", "only AWS4-HMAC-SHA256 is supported"
        too_many = self.max_parts is not None and request.operation == "UploadPart"
        if too_many and int(request.query["partNumber"]) > (self.max_parts or 0):
            return "InvalidArgument", f"part number must be at most {self.max_parts}"
        if self.no_object_lock and ("object-lock" in request.query or "retention" in request.query):
            return "NotImplemented", "Object Lock is not implemented"
        if self.region is not None and not request.presigned:
            scope = request.headers.get("authorization", "").split("Credential=", 1)[-1].split("/")
            if len(scope) > 2 and scope[2] != self.region:
                return "AuthorizationHeaderMalformed", (
                    f"The authorization header is malformed; the region '{scope[2]}' is wrong; expecting "
                    f"'{self.region}'"
                )
        if self.equal_parts and request.operation == "CompleteMultipartUpload":
            numbers = [int(n) for n in re.findall(rb"<PartNumber>(\d+)</PartNumber>", body)]
            sizes = self._part_sizes.get(request.query["uploadId"], {})
            listed = [sizes.get(number, -1) for number in sorted(numbers)]
            if any(size != listed[0] for size in listed[:-1]) or (listed and listed[-1] > listed[0]):
                return "InvalidPart", "All non-trailing parts must have the same length."
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        query = dict(parse_qsl(urlsplit(request.raw_path).query, keep_blank_values=True))
        recorded = Recorded(
            request.method,
            request.path,
            query,
            {name.lower(): value for name, value in request.headers.items()},
        )
        refusal = self._refusal(recorded, body)
        if refusal is not None:
            self.requests.append(recorded)
            self.refused.append((recorded, refusal[0]))
            code, message = refusal
            return web.Response(
                status=501 if code == "NotImplemented" else 400,
                content_type="application/xml",
                text=f"<Error><Code>{code}</Code><Message>{message}</Message></Error>",
            )
        headers = {name: value for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method,
            URL(self.upstream + request.raw_path, encoded=True),
            headers=headers,
            data=body if body or request.method in ("PUT", "POST") else None,
            allow_redirects=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        ) as answer:
            data = await answer.read()
            status = answer.status
            answer_headers = {
                name: value for name, value in answer.headers.items() if name.lower() not in HOP_BY_HOP
            }
        self.requests.append(
            Recorded(recorded.method, recorded.path, recorded.query, recorded.headers, status)
        )
        if recorded.operation == "UploadPart" and status == 200:
            sizes = self._part_sizes.setdefault(query["uploadId"], {})
            sizes[int(query["partNumber"])] = len(body)
        response = web.Response(status=status, body=data if request.method != "HEAD" else None)
        response.headers.update(answer_headers)
        if request.method == "HEAD" and "Content-Length" in answer.headers:
            response.headers["Content-Length"] = answer.headers["Content-Length"]
        return response
