"""Cross-node in-flight sharing over Redis: N nodes asked for the same image compute it once.

OcrService dedupes within its node first (InflightRuns: one run or one wait per key), and only
the node's first request for a key comes here. `claim(key)` is one round trip (a Lua script):
the result already in the shared cache -> `Claim(body=...)`; else SET NX PX of the claim key
`<prefix>c:<key>` with a random token -> `Claim(lead=True)`, this node computes; else another
node holds it -> `Claim(lead=False)`, this node follows. With Redis down -> None: the node
computes alone, as without Redis.

The lead keeps its claim alive (`hold`: PEXPIRE every claim_ttl/3 while its token is still the
value) and, once its run has ended and the result is in the shared cache, `finish`es: one
script writes the outcome record a follower may need (see below), deletes the claim if it is
still its own, and PUBLISHes the key on `<prefix>done`.

A follower (`follow`) waits for that message, or polls every `poll_interval` seconds (messages
are lost while a subscription reconnects), and then reads, in one MGET, the cached result,
the outcome record and the claim:
- the result (cache, or the record when caching is off) -> done, from the other node's run;
- a shared error in the record -> fails alike: errors of the image itself (4xx, worker_crashed,
  timeout) would recur on any node. Errors of the node (queue_full, unavailable,
  shutting_down, internal_error) are never shared: the lead only releases its claim, and
  each follower then takes over and runs itself;
- no claim and no outcome: the lead died (kill -9: its claim expired claim_ttl after its last
  extension) or gave up -> `claim` again: one follower leads, the others follow it;
- Redis down, or following for longer than `follow_limit` -> `TAKE_OVER`: run here without a
  claim. So no request is lost and none waits forever; the requests' own request_timeout still
  applies to each of them.
Outcome records (`<prefix>o:<key>`) live `claim_ttl` seconds: long enough for every follower's
next poll, and never read by a fresh request (which only checks the cache), so a failed image
is tried again by the next request, as on one node.

Everything runs on the IOLoop thread; the subscription is one task holding one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from .errors import ErrorInfo
from .store.redis import RedisLink, RedisResultCache, RedisTaskMirror

if TYPE_CHECKING:
    from .config import Config
    from .store import TaskStore

log = logging.getLogger("ppocr.cluster")

# Errors a follower does not share: they say the lead's node could not run it, not that the
# image cannot be read.
NODE_ERRORS = frozenset(("queue_full", "unavailable", "shutting_down", "internal_error",
                         "too_many_connections"))

# KEYS: result, claim. ARGV: token, claim ttl (ms).
_CLAIM = """
local body = redis.call('GET', KEYS[1])
if body then return {'cached', body} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'lead'} end
return {'follow'}
"""
# KEYS: claim. ARGV: token, claim ttl (ms).
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: claim, outcome. ARGV: token, record ('' = none), record ttl (ms), channel, message.
_FINISH = """
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

# An outcome record: one byte of kind, then the body (done) or "code\0message" (failed).
_RECORD_DONE, _RECORD_FAILED = b"D", b"F"


@dataclass(frozen=True)
class Claim:
    """What `claim` found: the cached `body`, or whether this node leads (its `token`
    holds the claim) or follows."""

    key: str
    lead: bool = False
    token: str = ""
    body: bytes | None = None


@dataclass(frozen=True)
class Followed:
    """How following ended: the other node's result `body`, its shared `error`, or neither:
    then `claim` is this node's own (it took over) or None (run here without a claim)."""

    body: bytes | None = None
    error: ErrorInfo | None = None
    claim: Claim | None = None


class ClusterRuns:
    """The claims, the completion channel and the followers of one node (see the module's
    docstring). `start` subscribes (in the background, reconnecting with the link); `close`
    stops. Counters: `led` claims won, `followed` keys followed, `taken_over` follows that
    ended by claiming, `shared_results` follows answered by another node's run."""

    def __init__(self, link: RedisLink, *, claim_ttl: float = 10.0, poll_interval: float = 0.5,
                 follow_limit: float = 120.0, caching: bool = True) -> None:
        self._link = link
        self._claim_ttl_ms = int(claim_ttl * 1000)
        self._claim_ttl = claim_ttl
        self._poll = poll_interval
        self._follow_limit = follow_limit
        self._caching = caching  # results are in the shared cache (else in outcome records)
        self._channel = link.key("done")
        self._claim_script = link.client.register_script(_CLAIM)
        self._extend_script = link.client.register_script(_EXTEND)
        self._finish_script = link.client.register_script(_FINISH)
        self._wakers: dict[str, asyncio.Event] = {}  # followed key -> set when it may be done
        self._listener: asyncio.Task | None = None
        self._closed = False  # (see RedisLink.closed)
        self.subscribed = False
        self.led = self.followed = self.taken_over = self.shared_results = 0

    def _result_key(self, key: str) -> str:
        return self._link.key("r", key)  # RedisResultCache's key

    def _claim_key(self, key: str) -> str:
        return self._link.key("c", key)

    def _outcome_key(self, key: str) -> str:
        return self._link.key("o", key)

    @property
    def available(self) -> bool:
        return self._link.available

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    # -- claims ---------------------------------------------------------------------------

    async def claim(self, key: str) -> Claim | None:
        """Leads, follows or finds the result cached (module docstring); None when Redis
        cannot be asked (the node computes alone)."""
        token = secrets.token_hex(16)
        reply = await self._link.call(self._claim_script(
            keys=[self._result_key(key), self._claim_key(key)],
            args=[token, self._claim_ttl_ms]))
        if not reply:
            return None
        kind = reply[0]
        if kind == b"cached":
            return Claim(key, body=reply[1])
        if kind == b"lead":
            self.led += 1
            return Claim(key, lead=True, token=token)
        return Claim(key)

    async def hold(self, claim: Claim, run: asyncio.Future) -> None:
        """Extends `claim` until `run` is done (a task the caller spawns). A claim lost
        meanwhile (expired while Redis stalled, evicted) is not fought for: another node may
        then run the same image too, which costs time, never a wrong answer."""
        while not run.done():
            await asyncio.wait({run}, timeout=self._claim_ttl / 3)
            if run.done():
                return
            extended = await self._link.call(self._extend_script(
                keys=[self._claim_key(claim.key)], args=[claim.token, self._claim_ttl_ms]))
            if extended == 0:
                log.info("the claim on %s was lost before its run ended", claim.key[:16])
                return

    async def finish(self, claim: Claim, body: bytes | None, error: ErrorInfo | None) -> None:
        """The lead's run ended with `body` (already in the shared cache when caching is on)
        or `error`: tell the followers (module docstring)."""
        record = b""
        if error is not None:
            if error.code not in NODE_ERRORS:
                record = _RECORD_FAILED + f"{error.code}\0{error.message}".encode()
        elif not self._caching and body is not None:
            record = _RECORD_DONE + body
        await self._link.call(self._finish_script(
            keys=[self._claim_key(claim.key), self._outcome_key(claim.key)],
            args=[claim.token, record, self._claim_ttl_ms, self._channel, claim.key]))

    async def release(self, claim: Claim) -> None:
        """Gives a claim up without a result (the run could not start): followers take
        over at once."""
        await self.finish(claim, None, ErrorInfo("unavailable", "released"))

    # -- following ------------------------------------------------------------------------

    async def follow(self, key: str) -> Followed:
        """Waits for another node's run of `key` (module docstring)."""
        self.followed += 1
        deadline = time.monotonic() + self._follow_limit
        waker = self._wakers.get(key)
        if waker is None:
            waker = self._wakers[key] = asyncio.Event()
        try:
            while True:
                waker.clear()
                reply = await self._link.call(self._link.client.mget(
                    self._result_key(key), self._outcome_key(key), self._claim_key(key)))
                if reply is None:  # Redis down: nobody can tell us; run here
                    return Followed()
                body, record, holder = reply
                if body is not None:
                    self.shared_results += 1
                    return Followed(body=body)
                if record is not None:
                    if record[:1] == _RECORD_DONE:
                        self.shared_results += 1
                        return Followed(body=record[1:])
                    code, _, message = record[1:].decode(errors="replace").partition("\0")
                    return Followed(error=ErrorInfo(code, message))
                if holder is None:  # the lead died or gave up: one follower takes over
                    claim = await self.claim(key)
                    if claim is None:
                        return Followed()
                    if claim.body is not None:
                        self.shared_results += 1
                        return Followed(body=claim.body)
                    if claim.lead:
                        self.taken_over += 1
                        return Followed(claim=claim)
                    continue  # another follower won: follow it
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("gave up following the run of %s on another node after %g s; "
                                "running it here", key[:16], self._follow_limit)
                    return Followed()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waker.wait(), min(self._poll, left))
        finally:
            if self._wakers.get(key) is waker:
                del self._wakers[key]

    async def _listen(self) -> None:
        """The completion channel: one subscription, renewed after every outage."""
        while not self._closed:
            await self._link.until_available()
            pubsub = self._link.client.pubsub(ignore_subscribe_messages=True)
            try:
                await asyncio.wait_for(pubsub.subscribe(self._channel), self._link.timeout)
                self.subscribed = True
                for waker in self._wakers.values():  # what was missed meanwhile: poll now
                    waker.set()
                while self._link.available:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        waker = self._wakers.get(message["data"].decode(errors="replace"))
                        if waker is not None:
                            waker.set()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._link.mark_down(f"pub/sub: {type(exc).__name__}: {exc}"[:200])
            finally:
                self.subscribed = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(self._link.check_interval)  # the link's loop reconnects

    def stats(self) -> dict:
        return {**self._link.stats(), "cluster_led": self.led, "cluster_followed": self.followed,
                "cluster_taken_over": self.taken_over,
                "cluster_shared_results": self.shared_results}


class SharedState:
    """What a node shares through Redis (service.redis_url), built from the config by
    server/main.py: the link, the shared result cache, the task mirrors and the claims.
    `start` connects (a Redis down at start leaves the node degraded, never stopped) and
    subscribes; `close` stops the mirrors' lease renewal, the subscription and the link, after
    the service has drained (its last writes go out first)."""

    def __init__(self, config: Config) -> None:
        service = config.service
        self.link = RedisLink(service.redis_url, prefix=service.redis_prefix,
                              timeout=service.redis_timeout)
        self._task_ttl = service.task_ttl
        self._lease = service.redis_task_lease
        self.cache = RedisResultCache(self.link, service.time, service.redis_l1_size)
        caching = service.time > 0 and service.img_number > 0
        self.runs = ClusterRuns(self.link, claim_ttl=service.redis_claim_ttl,
                                poll_interval=service.redis_poll,
                                follow_limit=config.web_server.request_timeout,
                                caching=caching)
        self._mirrors: list[RedisTaskMirror] = []
        self._node_stores: list[TaskStore] = []  # every mirror's local store

    def tasks(self, local: TaskStore) -> RedisTaskMirror:
        """`local` (the node's memory or SQLite task store) mirrored to Redis."""
        mirror = RedisTaskMirror(self.link, local, self._task_ttl, lease=self._lease,
                                 node_stores=self._node_stores)
        self._mirrors.append(mirror)
        return mirror

    async def start(self) -> None:
        await self.link.start()
        self.runs.start()

    async def close(self) -> None:
        for mirror in self._mirrors:
            await mirror.stop_renewing()
        await self.runs.close()
        await self.link.close()


__all__ = ["ClusterRuns", "Claim", "Followed", "SharedState", "NODE_ERRORS"]
