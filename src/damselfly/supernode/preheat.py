"""Preheat: warm a file or a container image into the supernode's CDN before anyone asks.

``POST /preheats`` (also ``/api/v1/preheats``) takes ``{type: file|image, url, filter,
identifier, headers}`` and answers ``{id}`` at once; ``GET /preheats/{id}`` reports the job as
WAITING, RUNNING, SUCCESS or FAILED with a message (Dragonfly v1's API).

- A file preheat warms one task: the same task id a ``dfget --url URL -f FILTER -i ID`` computes,
  fetched into the CDN to completion (``warm``, supplied by the shell).
- An image preheat takes the manifest URL ``http(s)://registry/v2/<repo>/manifests/<ref>``,
  fetches the manifest (asking the registry's token service for an anonymous bearer token when
  it answers 401 with ``WWW-Authenticate: Bearer realm=…``; the user's headers, e.g. basic
  auth, go with it), follows manifest lists / OCI indexes, and warms every blob (config and
  layers) at ``…/v2/<repo>/blobs/<digest>`` — the URL a registry mirror asks the swarm for.

Bounded: at most ``max_jobs`` jobs are kept (finished ones are forgotten oldest first; a full
table of unfinished jobs refuses new ones), ``max_running`` run at once, manifests are read up to
``MAX_MANIFEST`` bytes and an image warms at most ``MAX_BLOBS`` blobs. The headers live only in
the job's memory while it runs: never in a listing, a log line or an error message.

The parsing (request, image URL, challenge, manifests) is pure and table-tested; ``Preheater``
is the thin driver.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp

from damselfly.core.clock import Clock
from damselfly.core.errors import BadRequest, DamselflyError, OriginAuthError, OriginError
from damselfly.core.ids import parse_filter, redact_url, validate_url
from damselfly.core.protocol import MAX_HEADER_LEN, MAX_HEADERS

log = logging.getLogger("damselfly.supernode.preheat")

TYPES = ("file", "image")
WAITING, RUNNING, SUCCESS, FAILED = "WAITING", "RUNNING", "SUCCESS", "FAILED"
MAX_JOBS = 1024  # jobs kept for GET (finished ones are dropped oldest first)
MAX_RUNNING = 4  # preheats at once; the others wait (each one may fetch a whole image)
MAX_MANIFEST = 4 * 1024 * 1024  # bytes of one manifest or index
MAX_BLOBS = 512  # blobs warmed by one image preheat
MAX_INDEX_DEPTH = 2  # an index of indexes is as deep as anything real goes
REGISTRY_TIMEOUT = 30.0  # seconds for one manifest or token request
#: what a registry mirror's clients accept; an index is followed to its manifests
MANIFEST_ACCEPT = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_ACCEPT[:2]
_MANIFEST_PATH = re.compile(
    r"^/v2/(?P<repo>[a-z0-9]+(?:[._\-/][a-z0-9]+)*)/manifests/(?P<ref>[A-Za-z0-9_.:\-]{1,128})$"
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')

#: warm(url, filter_keys, identifier, headers) → the task id, once the task is in the CDN
Warm = Callable[[str, list[str], str, dict[str, str]], Awaitable[str]]


# ---- requests and jobs ----------------------------------------------------------------------


@dataclass(slots=True)
class PreheatRequest:
    type: str
    url: str
    filter: list[str] = field(default_factory=list)
    identifier: str = ""
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PreheatRequest:
        typ = obj.get("type", "file")
        if typ not in TYPES:
            raise BadRequest("field 'type' must be 'file' or 'image'")
        url = obj.get("url")
        if not isinstance(url, str):
            raise BadRequest("field 'url' must be a string", "give the http(s) URL to preheat")
        validate_url(url)
        flt = obj.get("filter") or []
        if isinstance(flt, list) and not all(isinstance(k, str) for k in flt):
            raise BadRequest("field 'filter' must be a string 'a&b' or a list of query keys")
        if not isinstance(flt, str | list) or len(flt) > 64:
            raise BadRequest("field 'filter' must be a string 'a&b' or a list of query keys")
        keys = parse_filter(flt)
        if len(keys) > 64 or any(len(k) > 256 for k in keys):
            raise BadRequest("field 'filter' names too many or too long query keys")
        ident = obj.get("identifier") or ""
        if not isinstance(ident, str) or len(ident) > 1024:
            raise BadRequest("field 'identifier' must be a string of at most 1024 characters")
        req = cls(typ, url, keys, ident, _headers(obj.get("headers")))
        if typ == "image":
            parse_image_url(url)
        return req


def _headers(v: Any) -> dict[str, str]:
    """The v1 form is an object; a list of "Key: Value" strings (dfget's form) is accepted too."""
    if v is None:
        return {}
    if isinstance(v, list):
        pairs: dict[str, Any] = {}
        for item in v:
            if not isinstance(item, str) or ":" not in item:
                raise BadRequest("each header must be 'Key: Value'")
            k, _, val = item.partition(":")
            pairs[k.strip()] = val.strip()
        v = pairs
    if not isinstance(v, dict) or len(v) > MAX_HEADERS:
        raise BadRequest(f"field 'headers' must be an object of at most {MAX_HEADERS} entries")
    out: dict[str, str] = {}
    for k, val in v.items():
        if not isinstance(k, str) or not isinstance(val, str):
            raise BadRequest("header names and values must be strings")
        if not k or len(k) + len(val) > MAX_HEADER_LEN or ":" in k:
            raise BadRequest("header names and values must be non-empty and of bounded length")
        if any(c in k + val for c in "\r\n\x00"):
            raise BadRequest("header names and values must not contain control characters")
        out[k] = val
    return out


@dataclass
class PreheatJob:
    id: str
    type: str
    url: str  # redacted: query values hidden
    created: float
    status: str = WAITING
    message: str = ""
    finished: float | None = None
    tasks: list[str] = field(default_factory=list)  # task ids warmed so far

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "url": self.url,
            "status": self.status,
            "message": self.message,
            "tasks": list(self.tasks),
        }


# ---- images: pure parsing -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageRef:
    base: str  # scheme://host[:port]
    repo: str
    reference: str  # tag or digest

    def manifest_url(self, reference: str | None = None) -> str:
        return f"{self.base}/v2/{self.repo}/manifests/{reference or self.reference}"

    def blob_url(self, digest: str) -> str:
        return f"{self.base}/v2/{self.repo}/blobs/{digest}"


def parse_image_url(url: str) -> ImageRef:
    """``http(s)://host/v2/<repo>/manifests/<tag|digest>`` → its parts; BadRequest otherwise."""
    parts = urlsplit(validate_url(url))
    m = _MANIFEST_PATH.match(parts.path)
    if m is None or parts.query:
        raise BadRequest(
            "an image preheat needs a manifest URL",
            "give http(s)://registry/v2/<repository>/manifests/<tag or digest>",
        )
    return ImageRef(f"{parts.scheme}://{parts.netloc}", m["repo"], m["ref"])


def parse_challenge(value: str) -> dict[str, str] | None:
    """``Bearer realm="…",service="…",scope="…"`` → its parameters; None for another scheme."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    params = {k.lower(): v for k, v in _CHALLENGE_PARAM.findall(rest)}
    realm = params.get("realm", "")
    if urlsplit(realm).scheme not in ("http", "https"):
        return None
    return params


def token_url(challenge: dict[str, str], ref: ImageRef) -> str:
    query = [("service", challenge["service"])] if challenge.get("service") else []
    query.append(("scope", challenge.get("scope") or f"repository:{ref.repo}:pull"))
    realm = challenge["realm"]
    return f"{realm}{'&' if '?' in realm else '?'}{urlencode(query)}"


def manifest_refs(body: bytes, content_type: str) -> tuple[str, list[str]]:
    """What a manifest names: ("index", manifest digests) or ("manifest", blob digests).

    Raises OriginError when the body is not a manifest this supports (schema 1, garbage)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise OriginError("the registry's manifest is not JSON") from e
    if not isinstance(doc, dict):
        raise OriginError("the registry's manifest is not a JSON object")
    media = str(doc.get("mediaType") or content_type.split(";")[0].strip())
    if isinstance(doc.get("manifests"), list) or media in INDEX_TYPES:
        entries = doc.get("manifests")
        kind = "index"
    elif isinstance(doc.get("layers"), list):
        entries = [doc.get("config"), *doc["layers"]]
        kind = "manifest"
    else:
        raise OriginError(
            f"unsupported manifest ({media or 'no media type'})",
            "push the image as an OCI or Docker schema 2 image",
        )
    digests: list[str] = []
    for entry in entries or []:
        d = entry.get("digest") if isinstance(entry, dict) else None
        if not isinstance(d, str) or not _DIGEST.match(d):
            raise OriginError("the registry's manifest names a malformed or non-sha256 digest")
        if d not in digests:
            digests.append(d)
    return kind, digests


# ---- the driver -----------------------------------------------------------------------------


class Preheater:
    """Owns the preheat jobs of one supernode. ``start()``/``close()`` with the application."""

    def __init__(
        self,
        warm: Warm,
        clock: Clock,
        max_jobs: int = MAX_JOBS,
        max_running: int = MAX_RUNNING,
    ) -> None:
        self.warm = warm
        self.clock = clock
        self.max_jobs = max_jobs
        self._slots = asyncio.Semaphore(max_running)
        self._jobs: dict[str, PreheatJob] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.counts: dict[str, int] = {SUCCESS: 0, FAILED: 0}
        self._seq = itertools.count(1)

    def __repr__(self) -> str:
        running = sum(j.status == RUNNING for j in self._jobs.values())
        return f"Preheater(jobs={len(self._jobs)}, running={running})"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=REGISTRY_TIMEOUT),
        )

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # ---- API ------------------------------------------------------------------------------
    def submit(self, req: PreheatRequest) -> PreheatJob:
        if len(self._jobs) >= self.max_jobs and not self._forget_one():
            raise BadRequest(
                f"{self.max_jobs} preheats are already waiting or running",
                "try again when some have finished",
            )
        jid = f"{next(self._seq):06d}-{secrets.token_hex(4)}"
        job = PreheatJob(jid, req.type, redact_url(req.url), self.clock.now())
        self._jobs[jid] = job
        task = asyncio.create_task(self._run(job, req), name=f"preheat-{jid}")
        self._tasks[jid] = task
        task.add_done_callback(lambda _t: self._tasks.pop(jid, None))
        log.info("preheat %s queued: %s %s", jid, req.type, job.url)
        return job

    def get(self, jid: str) -> PreheatJob | None:
        return self._jobs.get(jid)

    def jobs(self) -> list[PreheatJob]:
        return list(self._jobs.values())

    def _forget_one(self) -> bool:
        for jid, job in self._jobs.items():  # oldest first
            if job.status in (SUCCESS, FAILED):
                del self._jobs[jid]
                return True
        return False

    # ---- running --------------------------------------------------------------------------
    async def _run(self, job: PreheatJob, req: PreheatRequest) -> None:
        async with self._slots:
            job.status = RUNNING
            started = self.clock.now()
            try:
                if req.type == "file":
                    job.tasks.append(
                        await self.warm(req.url, req.filter, req.identifier, req.headers)
                    )
                    job.message = "the file is in the CDN"
                else:
                    await self._image(job, req)
            except DamselflyError as e:
                self._finish(job, FAILED, str(e))
            except aiohttp.ClientError as e:
                self._finish(job, FAILED, f"cannot reach the registry: {type(e).__name__}")
            except TimeoutError:
                self._finish(job, FAILED, "the registry did not answer in time; try again")
            else:
                self._finish(job, SUCCESS, job.message)
            log.info(
                "preheat %s %s in %.1fs: %s %s (%d task(s)) %s",
                job.id,
                job.status,
                self.clock.now() - started,
                req.type,
                job.url,
                len(job.tasks),
                job.message,
            )

    def _finish(self, job: PreheatJob, status: str, message: str) -> None:
        job.status, job.message, job.finished = status, message, self.clock.now()
        self.counts[status] += 1

    async def _image(self, job: PreheatJob, req: PreheatRequest) -> None:
        ref = parse_image_url(req.url)
        headers = dict(req.headers)
        blobs: list[str] = []
        todo: list[tuple[str, int]] = [(ref.reference, 0)]
        while todo:
            reference, depth = todo.pop(0)
            body, ctype, headers = await self._manifest(ref, reference, headers)
            kind, digests = manifest_refs(body, ctype)
            if kind == "index":
                if depth >= MAX_INDEX_DEPTH:
                    raise OriginError("the image index nests too deeply")
                todo.extend((d, depth + 1) for d in digests)
            else:
                blobs.extend(d for d in digests if d not in blobs)
            if len(blobs) + len(todo) > MAX_BLOBS:
                raise OriginError(f"the image has more than {MAX_BLOBS} blobs; not preheated")
        for d in blobs:
            job.tasks.append(await self.warm(ref.blob_url(d), req.filter, "", headers))
        job.message = f"{len(blobs)} blob(s) of {ref.repo}:{ref.reference} are in the CDN"

    async def _manifest(
        self, ref: ImageRef, reference: str, headers: dict[str, str]
    ) -> tuple[bytes, str, dict[str, str]]:
        """GET one manifest; on a Bearer challenge fetch a token once and retry with it.
        Returns the body, its content type and the headers that worked (for the blobs)."""
        assert self._session is not None
        url = ref.manifest_url(reference)
        for attempt in range(2):
            hdrs = {**headers, "Accept": ", ".join(MANIFEST_ACCEPT)}
            async with self._session.get(url, headers=hdrs, allow_redirects=True) as r:
                if r.status == 401 and attempt == 0:
                    challenge = parse_challenge(r.headers.get("WWW-Authenticate", ""))
                    if challenge is not None:
                        token = await self._token(challenge, ref, headers)
                        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                        headers["Authorization"] = token
                        continue
                if r.status in (401, 403):
                    raise OriginAuthError(
                        f"the registry refused the manifest of {ref.repo} ({r.status})",
                        "pass the registry's credentials in 'headers'",
                        status=r.status,
                    )
                if r.status != 200:
                    raise OriginError(
                        f"the registry answered {r.status} for the manifest {ref.repo}:{reference}",
                        "check the repository and tag",
                    )
                body = await r.content.read(MAX_MANIFEST + 1)
                if len(body) > MAX_MANIFEST:
                    raise OriginError(f"the manifest is larger than {MAX_MANIFEST} bytes")
                return body, r.headers.get("Content-Type", ""), headers
        raise OriginAuthError(
            f"the registry refused its own token for {ref.repo}",
            "pass the registry's credentials in 'headers'",
        )

    async def _token(
        self, challenge: dict[str, str], ref: ImageRef, headers: dict[str, str]
    ) -> str:
        """An anonymous bearer token (the user's basic credentials go along when given)."""
        assert self._session is not None
        url = token_url(challenge, ref)
        auth = {k: v for k, v in headers.items() if k.lower() == "authorization"}
        basic = {k: v for k, v in auth.items() if v.lower().startswith("basic ")}
        async with self._session.get(url, headers=basic) as r:
            if r.status != 200:
                raise OriginAuthError(
                    f"the registry's token service answered {r.status}",
                    "pass the registry's credentials in 'headers'",
                    status=401,
                )
            body = await r.content.read(64 * 1024 + 1)
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token or len(token) > 16 * 1024:
            raise OriginAuthError("the registry's token service gave no usable token")
        return f"Bearer {token}"
