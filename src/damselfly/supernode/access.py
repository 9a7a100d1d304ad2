"""The supernode's access control for private tasks (docs/protocol.md, "Private tasks").

It owns which tasks are private, the origin access checks (one ``GET`` with ``Range: bytes=0-0``
and the registering peer's own headers; cached briefly by ``core.access.CheckCache`` and single-
flighted: concurrent checks of one scope and credential share one origin request), the grant
signer, and the grants it handed out (renewed by schedule answers past half their life).

- A check answers for its *scope* (``core.access.access_scope``): all blobs and manifests of one
  registry repository, or else the exact URL. The request itself is always for the peer's own
  URL, so a peer is never let in on the strength of another repository's check.

- A task turns private at the first registration (or preheat) whose headers carry credentials,
  and stays private: the set is kept in ``home/private-tasks`` (task ids only, no secret), so a
  cached private task is not served to anyone after a restart.
- Whatever its headers, a peer registering for a private task must pass a check: an anonymous
  peer passes only when the origin answers anonymous requests (then the content is public).
- The registration that finds a private task unknown to the CDN needs no separate check: it
  ``claim``s the task and the CDN's fetch, started with its own headers, is its check (its
  outcome is ``record``ed like a check's) — unless the cache already answers for its scope and
  credentials (a refused credential is not sent to the origin again). Later registrations are
  checked.
- The piece port serves a task without a grant only when the task is known public in this
  process (registered without credentials since it started); private or not yet registered:
  a valid grant is required.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from damselfly.core.access import CheckCache, CheckResult, is_private
from damselfly.core.clock import Clock
from damselfly.core.errors import DamselflyError, OriginAuthError, OriginError, OriginNotFound
from damselfly.core.grants import DEFAULT_TTL, GrantError, GrantSigner
from damselfly.core.ids import TASK_ID_RE, redact_url

log = logging.getLogger("damselfly.supernode.access")

PRIVATE_FILE = "private-tasks"
#: a grant record is dropped this long after its grant expired (a peer that went silent)
GRANT_RECORD_SLACK = 60.0
#: the refusal every peer whose credentials fail sees (it names no header, no value)
REFUSED = "the origin refused this host's credentials for a private task"

#: sends the check request (GET, Range: bytes=0-0, the peer's headers) and returns the status
OriginProbe = Callable[[str, Mapping[str, str]], Awaitable[int]]


class GrantRequired(DamselflyError):
    """A schedule call for a private task from a peer that holds no grant: it registered before
    the task turned private, or this supernode restarted. Answered 409: the peer registers
    again, which checks its credentials."""

    code = "grant_required"

    def __init__(self) -> None:
        super().__init__("this task is private: register again to be granted it")


class AccessControl:
    def __init__(
        self,
        home: Path,
        probe: OriginProbe,
        clock: Clock,
        grant_ttl: float = DEFAULT_TTL,
        wall_clock: Clock | None = None,
    ) -> None:
        self.path = home / PRIVATE_FILE
        self.probe = probe
        self.clock = clock
        self.cache = CheckCache(clock)
        self.signer = GrantSigner(wall_clock, grant_ttl)
        self._private: set[str] = set()
        self._public: set[str] = set()
        # scope key → (the URL checked, its outcome to come)
        self._inflight: dict[bytes, tuple[str, asyncio.Future[CheckResult]]] = {}
        self._grants: dict[tuple[str, str], int] = {}  # (task, peer) → expiry of its grant
        self._claims: set[str] = set()  # tasks whose first fetch is some registration's check
        self.checks = 0  # origin requests made for checks (the rest came from the cache)
        self.refusals = 0

    # -- start-up ----------------------------------------------------------------------------

    def load(self, keep: Callable[[str], bool]) -> None:
        """Read the private task ids left by an earlier run; those ``keep`` rejects (no longer
        cached) are dropped and the file rewritten without them."""
        try:
            lines = self.path.read_text().split()
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("cannot read %s: %s", self.path, e.strerror)
            return
        found = {t for t in lines if TASK_ID_RE.match(t)}
        self._private = {t for t in found if keep(t)}
        if self._private != found or len(lines) != len(found):
            self._rewrite()
        if self._private:
            log.info("access: %d private task(s) kept from an earlier run", len(self._private))

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{PRIVATE_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text("".join(f"{t}\n" for t in sorted(self._private)))
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot write %s: %s", self.path, e.strerror)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _remember_private(self, tid: str) -> None:
        self._private.add(tid)
        self._public.discard(tid)
        try:
            with self.path.open("a") as f:
                f.write(f"{tid}\n")
        except OSError as e:
            log.warning("cannot record private task in %s: %s", self.path, e.strerror)

    # -- classification ------------------------------------------------------------------------

    def classify(self, tid: str, headers: Mapping[str, str]) -> bool:
        """Whether the task is private, after a registration (or preheat) with ``headers``."""
        if tid in self._private:
            return True
        if is_private(headers):
            log.info("task %s is private (its registration carries credentials)", tid[:12])
            self._remember_private(tid)
            return True
        self._public.add(tid)
        return False

    def is_private(self, tid: str) -> bool:
        return tid in self._private

    def forget_task(self, tid: str) -> None:
        """The task left the scheduler: its public status is learned again at its next
        registration; its grants lapse (a private task stays private)."""
        self._public.discard(tid)
        for key in [k for k in self._grants if k[0] == tid]:
            del self._grants[key]

    # -- origin checks ---------------------------------------------------------------------------

    def claim(self, tid: str, url: str, headers: Mapping[str, str]) -> bool:
        """Let the caller's CDN fetch of a task new to the CDN stand for its check (True), unless
        another registration claimed it first or the cache already answers for the caller's
        scope and credentials (a refusal then costs the origin nothing); ``unclaim`` when that
        fetch answered."""
        if tid in self._claims or self.cache.get(self.cache.key(url, headers)) is not None:
            return False
        self._claims.add(tid)
        return True

    def unclaim(self, tid: str) -> None:
        self._claims.discard(tid)

    def record(self, url: str, headers: Mapping[str, str], allowed: bool, status: int) -> None:
        """The outcome of a fetch that stood for a check, remembered as one (for its scope)."""
        self.cache.put(self.cache.key(url, headers), CheckResult(allowed, status))

    def refused(self) -> OriginAuthError:
        self.refusals += 1
        return OriginAuthError(REFUSED, "pass credentials that open the URL with --header", 403)

    async def admit(self, tid: str, url: str, headers: Mapping[str, str]) -> None:
        """Let a peer into private task ``tid`` if its own ``headers`` open ``url`` at the
        origin (or, within the cache's life, another URL of the same scope); else
        OriginAuthError (403), OriginNotFound or OriginError."""
        result = await self._result(self.cache.key(url, headers), url, headers, rejoin=True)
        if not result.allowed:
            raise self.refused()

    async def _result(
        self, key: bytes, url: str, headers: Mapping[str, str], rejoin: bool
    ) -> CheckResult:
        """The cached answer for ``key``, or the running check's, or a new check of ``url``."""
        result = self.cache.get(key)
        if result is not None:
            return result
        flight = self._inflight.get(key)
        if flight is None:
            return await self._lead(key, url, headers)
        first, fut = flight
        try:
            return await asyncio.shield(fut)
        except Exception:
            if first == url:
                raise
            # an error is about the URL that was asked (404: that blob is missing; 5xx), not
            # about the scope: this URL is asked for (sharing a check once more at most)
            if rejoin:
                return await self._result(key, url, headers, rejoin=False)
            return await self._lead(key, url, headers)

    async def _lead(self, key: bytes, url: str, headers: Mapping[str, str]) -> CheckResult:
        """Check ``url`` at the origin; checks of the same key arriving meanwhile wait for this
        one (unless one is already running: then this one runs unshared)."""
        fut: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()
        shared = key not in self._inflight
        if shared:
            self._inflight[key] = (url, fut)
        try:
            result = await self._check(url, headers)
        except BaseException as e:
            if not fut.done():
                fut.set_exception(
                    e
                    if isinstance(e, Exception)
                    else OriginError("the access check was interrupted", "try again")
                )
                fut.exception()  # retrieved: the waiters (if any) get it too
            raise
        else:
            self.cache.put(key, result)
            fut.set_result(result)
            return result
        finally:
            if shared:  # only its leader removes a flight: nobody replaced it meanwhile
                del self._inflight[key]

    async def _check(self, url: str, headers: Mapping[str, str]) -> CheckResult:
        self.checks += 1
        status = await self.probe(url, headers)
        # 416: the origin accepted the request and only refused the range (an empty file)
        if status in (200, 206, 416):
            return CheckResult(True, status)
        if status in (401, 403):
            log.info("access check of %s refused (%d)", redact_url(url), status)
            return CheckResult(False, status)
        if status in (404, 410):
            raise OriginNotFound(f"the origin has no {redact_url(url)} ({status})")
        raise OriginError(
            f"the origin answered {status} to the access check of {redact_url(url)}",
            "try again later",
            status,
        )

    # -- grants ----------------------------------------------------------------------------------

    def grant(self, tid: str, pid: str) -> str:
        token, expires = self.signer.issue(tid, pid)
        self._grants[(tid, pid)] = expires
        return token

    def renew(self, tid: str, pid: str) -> str:
        """A new grant when the peer's is past half its life, else ""; GrantRequired when the
        peer holds none (it registered before the task turned private, or we restarted)."""
        expires = self._grants.get((tid, pid))
        if expires is None:
            raise GrantRequired()
        return self.grant(tid, pid) if self.signer.renew_due(expires) else ""

    def drop_grant(self, tid: str, pid: str) -> None:
        self._grants.pop((tid, pid), None)

    def drop_peer(self, pid: str) -> None:
        for key in [k for k in self._grants if k[1] == pid]:
            del self._grants[key]

    def expire_grants(self) -> int:
        now = self.signer.clock.now()
        old = [k for k, exp in self._grants.items() if exp + GRANT_RECORD_SLACK < now]
        for k in old:
            del self._grants[k]
        return len(old)

    # -- the piece port --------------------------------------------------------------------------

    def piece_refusal(self, tid: str, token: str | None) -> str | None:
        """Why a piece of ``tid`` may not be served to a request carrying ``token``; None: serve."""
        if tid in self._public:
            return None
        try:
            self.signer.verifier.check(token, tid)
        except GrantError as e:
            return str(e)
        return None

    def __repr__(self) -> str:
        return (
            f"AccessControl({len(self._private)} private, {len(self._public)} public, "
            f"{len(self._grants)} grants, {self.checks} checks)"
        )
