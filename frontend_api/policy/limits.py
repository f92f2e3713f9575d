"""Limits and backpressure: who may start a generation now.

Checked when a generation starts (`OpenAIServing.start`), cheapest first:
- in-flight generations in this process (`max_in_flight`): 503 at once, never a queue;
- concurrent generations per caller (`Principal.max_streams`): 429 at once. Both are counters in this process
  (a generation lives in one process; a shared counter would leak on a crash);
- requests per minute (`Principal.rpm`, each request costs 1) and tokens per minute (`Principal.tpm`): a request
  is admitted while the budget has room for its prompt tokens, which are charged then; its completion tokens
  are charged when the generation ends, however it ends. In process memory, or in Redis when `redis_url` is set,
  so that every front-end process spends one budget.

The algorithm is the `limits` library's sliding window counter: O(1) per caller in memory and in Redis (one
atomic Lua script), no burst of twice the limit at a window boundary as with a fixed window, and no entry per
request or token as the moving window keeps (a token budget of 100k would be 100k list entries).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, SlidingWindowCounterSupport, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from frontend_api.errors import OpenAIError
from frontend_api.policy.auth import Principal
from frontend_api.settings import Settings

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 2.0  # a Redis that does not answer fails the request quickly instead of hanging it
FAIL_OPEN_LOG_EVERY_S = 10.0  # while Redis is down with fail-open, one warning per this period, not per request
UNCAPPED = 2**52  # "limit" for charges that must always land (exact in Redis' Lua doubles)


def seconds_until_room(window: tuple[int, float, int, float], limit: int, cost: int, expiry: int) -> float:
    """When a sliding-window counter will admit `cost` more, from the storage's
    (previous_count, previous_ttl, current_count, current_ttl). `limits` admits while
    floor(weighted) + cost <= limit, i.e. weighted < limit - cost + 1, where
    weighted = previous * previous_ttl / expiry + current: it falls while the current window runs (previous_ttl
    shrinks), then the current count becomes the previous one and decays in turn."""
    previous, previous_ttl, current, current_ttl = window
    below = limit - cost + 1
    if current < below:  # enough once enough of the previous window's weight has gone
        if previous == 0:
            return 0.0
        return max(0.0, previous_ttl - (below - current) * expiry / previous)
    window_ends_in = max(0.0, current_ttl - expiry)
    return window_ends_in + expiry * (1 - below / current)


@dataclass
class Admission:
    """A started generation's claim on the limits. `finish` releases it exactly once, however the generation ends;
    `release_slots` is its synchronous part (safe from a finalizer)."""

    limiter: Limiter
    principal: Principal
    released: bool = False

    def release_slots(self) -> None:
        if not self.released:
            self.released = True
            self.limiter.free_slots(self.principal)

    async def finish(self, completion_tokens: int) -> None:
        if self.released:
            return
        self.release_slots()
        if completion_tokens > 0 and self.principal.tpm:
            await self.limiter.charge_tokens(self.principal, completion_tokens)


class LimitExceeded(OpenAIError):
    """A limit refused the request; `limit` names it for the metrics: rpm, tpm, streams or in_flight."""

    def __init__(self, limit: str, status: int, message: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(status, message, code=code, headers=headers)
        self.limit = limit


class Limiter:
    """One per app (created in the lifespan, `app.state.limiter`). `on_refused(key_name, limit)` is told of each
    refusal, `on_fail_open(key_name)` of each request let through unlimited because Redis is unreachable and
    `rate_limit_fail_open` is set (the metrics count both)."""

    def __init__(
        self,
        settings: Settings,
        on_refused: Callable[[str, str], None] | None = None,
        on_fail_open: Callable[[str], None] | None = None,
    ):
        self.on_refused = on_refused
        self.on_fail_open = on_fail_open
        self.fail_open = settings.rate_limit_fail_open
        self._fail_open_logged_at = -math.inf
        self.max_in_flight = settings.max_in_flight
        self.in_flight = 0
        self.streams: Counter[str] = Counter()  # limit_id -> generations in flight in this process
        self.backend = "redis" if settings.redis_url else "memory"
        self._pool: redis.asyncio.ConnectionPool | None = None
        storage: Storage
        if settings.redis_url:
            # Our own pool, so that closing the app closes the connections (the limits storage has no close).
            self._pool = redis.asyncio.ConnectionPool.from_url(
                settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
            )
            scheme, rest = settings.redis_url.split("://", 1)
            uri = f"async+{'redis+unix' if scheme == 'unix' else scheme}://{rest}"
            storage = RedisStorage(
                uri,
                implementation="redispy",
                connection_pool=self._pool,  # type: ignore[arg-type]  # limits types its **options as scalars
                key_prefix=settings.redis_key_prefix,
                wrap_exceptions=True,
            )
        else:
            storage = MemoryStorage()
        self.storage = storage
        self.window = SlidingWindowCounterRateLimiter(storage)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    async def admit(self, principal: Principal, prompt_tokens: int) -> Admission:
        """Claim a generation slot and spend the request and its prompt tokens, or raise the OpenAIError to answer
        with (429 / 503, with Retry-After). The caller must `finish` the admission when the generation ends."""
        try:
            self._take_slots(principal)
            admission = Admission(self, principal)
            try:
                await self._spend(principal, prompt_tokens)
            except BaseException:
                admission.release_slots()
                raise
        except LimitExceeded as exc:
            if self.on_refused is not None:
                self.on_refused(principal.name, exc.limit)
            raise
        return admission

    def _take_slots(self, principal: Principal) -> None:
        # No await between the checks and the increments: atomic within the event loop.
        if self.in_flight >= self.max_in_flight:
            raise LimitExceeded(
                "in_flight",
                503,
                f"The server is at its limit of {self.max_in_flight} generations in flight; retry shortly.",
                code="server_overloaded",
                headers={"Retry-After": "1"},
            )
        cap = principal.max_streams
        if cap is not None and self.streams[principal.limit_id] >= cap:
            raise LimitExceeded(
                "streams",
                429,
                f"Too many concurrent generations: the limit is {cap} at a time for "
                f"{_who(principal)}. Wait for one to finish.",
                code="too_many_streams",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1
        self.streams[principal.limit_id] += 1

    def free_slots(self, principal: Principal) -> None:
        self.in_flight -= 1
        self.streams[principal.limit_id] -= 1
        if self.streams[principal.limit_id] <= 0:
            del self.streams[principal.limit_id]

    async def _spend(self, principal: Principal, prompt_tokens: int) -> None:
        try:
            if principal.rpm:
                await self._hit(principal, "rpm", principal.rpm, 1, "requests")
            if principal.tpm:
                if prompt_tokens > principal.tpm:
                    raise LimitExceeded(
                        "tpm",
                        429,
                        f"Request too large: its prompt has {prompt_tokens} tokens, more than "
                        f"the limit of {principal.tpm} tokens per minute for {_who(principal)}. "
                        "Shorten the prompt.",
                        code="rate_limit_exceeded",
                    )
                await self._hit(principal, "tpm", principal.tpm, prompt_tokens, "tokens")
        except StorageError as exc:
            if not self.fail_open:
                raise limiter_unavailable(exc) from exc
            self._let_through(principal, exc)

    def _let_through(self, principal: Principal, exc: StorageError) -> None:
        if self.on_fail_open is not None:
            self.on_fail_open(principal.name)
        if time.monotonic() - self._fail_open_logged_at >= FAIL_OPEN_LOG_EVERY_S:
            self._fail_open_logged_at = time.monotonic()
            logger.warning(
                "rate-limit store unavailable, failing open (rate_limit_fail_open): requests are served "
                "without rpm/tpm limits until it is back: %s",
                exc,
            )

    async def _hit(self, principal: Principal, kind: str, amount: int, cost: int, unit: str) -> None:
        item = RateLimitItemPerMinute(amount)
        if await self.window.hit(item, kind, principal.limit_id, cost=cost):
            return
        window = await self._window(item, kind, principal.limit_id)
        wait = max(1, math.ceil(seconds_until_room(window, amount, cost, item.get_expiry())))
        asked = "" if cost == 1 else f" This request needs {cost}."
        raise LimitExceeded(
            kind,
            429,
            f"Rate limit reached: {amount} {unit} per minute for {_who(principal)}.{asked} Retry in {wait} s.",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(wait)},
        )

    async def _window(self, item: RateLimitItem, *identifiers: str) -> tuple[int, float, int, float]:
        storage = self.storage
        assert isinstance(storage, SlidingWindowCounterSupport)
        return await storage.get_sliding_window(item.key_for(*identifiers), item.get_expiry())

    async def charge_tokens(self, principal: Principal, tokens: int) -> None:
        """Spend completion tokens after the fact: always lands, even past the limit (the next request waits)."""
        assert principal.tpm
        item = RateLimitItemPerMinute(principal.tpm)
        storage = self.storage
        assert isinstance(storage, SlidingWindowCounterSupport)
        started = time.monotonic()
        try:
            await storage.acquire_sliding_window_entry(
                item.key_for("tpm", principal.limit_id), UNCAPPED, item.get_expiry(), tokens
            )
        except StorageError as exc:  # the response is already out; losing one charge beats failing it
            logger.warning(
                "could not charge %d completion tokens to %s after %.1f s: %s",
                tokens,
                principal.limit_id,
                time.monotonic() - started,
                exc,
            )


def _who(principal: Principal) -> str:
    return f"API key {principal.name!r}" if principal.key_id is not None else "this client address"


def limiter_unavailable(exc: Exception) -> OpenAIError:
    """Fail closed while the rate-limit store is unreachable (the default; see `rate_limit_fail_open`)."""
    logger.warning("rate-limit store unavailable: %s", exc)
    return OpenAIError(
        503,
        "The rate limiter's store (Redis) is unavailable; retry shortly.",
        code="rate_limiter_unavailable",
        headers={"Retry-After": "5"},
    )
