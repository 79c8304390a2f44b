"""Delivery workers: claim due outbox rows, sign, POST, classify, schedule retries."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import aiohttp
import structlog

from cartd import __version__
from cartd.config import Config
from cartd.signing import Signer
from cartd.store import DB_ERRORS, Claimed, Outcome, Store

log = structlog.get_logger("cartd.delivery")

LEASE_MARGIN = timedelta(seconds=10)
IDLE_WAIT = 1.0
RETRYABLE = {408, 425, 429}
MAX_ANSWER = 64 * 1024  # bytes of a receiver's answer worth reading


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the receiver did with one attempt, before it becomes an Outcome."""

    result: str  # 2xx, 3xx, 4xx, 5xx, timeout, error
    http_status: int | None
    error: str | None
    retry_after: float | None = None
    seconds: float = 0.0


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def decide(
    attempt: Attempt, attempts_before: int, config: Config, now: datetime,
    rng: random.Random = random.Random(),
) -> tuple[str, datetime | None]:
    """The delivery's next status and next attempt time after this attempt."""
    if attempt.result == "2xx":
        return "delivered", None
    if attempt.result == "4xx" and attempt.http_status not in RETRYABLE:
        return "dead", None
    schedule = config.webhook.retry_schedule
    if attempts_before >= len(schedule):
        return "dead", None
    base = schedule[attempts_before]
    jitter = config.webhook.retry_jitter
    delay = base * (1 + rng.uniform(-jitter, jitter))
    if attempt.retry_after is not None and attempt.http_status in (429, 503):
        delay = min(max(attempt.retry_after, delay), 2 * delay)
    return "pending", now + timedelta(seconds=delay)


class Deliverer:
    """Keeps at most `webhook.concurrency` attempts in flight."""

    def __init__(
        self,
        store: Store,
        config: Callable[[], Config],
        *,
        instance_id: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_outcome: Callable[[Claimed, Attempt, str], None] = lambda *_: None,
    ) -> None:
        self.store = store
        self.config = config
        self.instance_id = instance_id
        self.clock = clock
        self.on_outcome = on_outcome
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False

    def wake(self) -> None:
        """New work may be due (called after the outbox is written)."""
        self._wake.set()

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        try:
            while not self._stopping:
                await self._fill()
                self._wake.clear()
                waiters = [asyncio.ensure_future(self._wake.wait())]
                try:
                    await asyncio.wait([*waiters, *self._inflight], timeout=IDLE_WAIT,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiters[0].cancel()
        finally:
            await self._drain()

    def stop(self) -> None:
        """Stop taking work; `run` returns once in-flight attempts finish or time out."""
        self._stopping = True
        self._wake.set()

    async def _fill(self) -> None:
        config = self.config()
        free = config.webhook.concurrency - len(self._inflight)
        if free <= 0:
            return
        try:
            claimed = await self.store.claim_deliveries(
                instance=self.instance_id, now=self.clock(),
                lease=timedelta(seconds=config.webhook.timeout) + LEASE_MARGIN, limit=free,
            )
        except DB_ERRORS as exc:
            log.debug("delivery_claim_failed", error=str(exc))  # the health loop reports it
            return
        signer = Signer(config.webhook.secrets)
        for row in claimed:
            task = asyncio.create_task(self._deliver(row, config, signer))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _drain(self) -> None:
        timeout = self.config().shutdown_timeout
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _deliver(self, row: Claimed, config: Config, signer: Signer) -> None:
        started = time.monotonic()
        attempt = await self._post(row, config, signer)
        attempt = replace(attempt, seconds=time.monotonic() - started)
        now = self.clock()
        status, next_at = decide(attempt, row.attempts, config, now)
        self.on_outcome(row, attempt, status)
        log.info("delivery_attempt", delivery_id=row.id, attempt=row.attempts + 1,
                 result=attempt.result, http_status=attempt.http_status, outcome=status,
                 error=attempt.error)
        outcome = Outcome(row.id, status, attempt.http_status, attempt.error, next_at, now)
        while True:
            try:
                await self.store.record_outcomes([outcome])
                return
            except DB_ERRORS as exc:
                log.warning("delivery_outcome_not_recorded", delivery_id=row.id, error=str(exc))
                await asyncio.sleep(1)

    async def _post(self, row: Claimed, config: Config, signer: Signer) -> Attempt:
        assert self._session is not None
        url = row.url or config.webhook.url
        headers = {
            **config.webhook.headers,
            "content-type": "application/json",
            "user-agent": f"cartd/{__version__}",
            **signer.headers(row.id, int(time.time()), row.body),
        }
        try:
            async with asyncio.timeout(config.webhook.timeout), self._session.post(
                url, data=row.body, headers=headers, allow_redirects=False,
            ) as response:
                await _drain_body(response)  # the whole answer counts against the timeout
                code = response.status
                error = None if 200 <= code < 300 else f"HTTP {code} {response.reason or ''}".strip()
                retry_after = retry_after_seconds(response.headers.get("Retry-After"), self.clock())
                return Attempt(f"{code // 100}xx" if 200 <= code < 600 else "error", code, error,
                               retry_after)
        except TimeoutError:
            return Attempt("timeout", None, f"no answer within {config.webhook.timeout:g}s")
        except aiohttp.ClientError as exc:
            return Attempt("error", None, f"{type(exc).__name__}: {exc}"[:500])


async def _drain_body(response: aiohttp.ClientResponse) -> None:
    """Read the answer to its end (bounded): a response cut short is a connection error,
    not a success."""
    read = 0
    async for chunk in response.content.iter_chunked(16384):
        read += len(chunk)
        if read > MAX_ANSWER:
            return
