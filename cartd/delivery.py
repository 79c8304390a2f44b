"""The deliverer service: claim due outbox rows, sign, POST, classify (cartd.attempts),
write the outcomes; fair shares of the slots between destinations."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import structlog

from cartd import __version__
from cartd.attempts import (Attempt, Breakers, decide, destination, failed, hostname,
                            retry_after_seconds)
from cartd.config import Config
from cartd.db import DB_ERRORS, Claimed, Outcome, Store, one_line, refused_values
from cartd.rules import override_url_error
from cartd.services import Stopping, cancel
from cartd.signing import Signer

log = structlog.get_logger("cartd.delivery")

LEASE_MARGIN = timedelta(seconds=10)
BUFFER_MAX_AGE = 1.0  # seconds a claimed row may wait in memory for a slot
# Finished attempts whose outcome is not written yet, at most, in units of concurrency:
# past that no attempt starts until the writer catches up, so a slow database bounds
# what a crash would send twice (and keeps each outcome statement small).
UNRECORDED_MAX = 4
IDLE_WAIT = 1.0
MAX_ANSWER = 64 * 1024  # bytes of a receiver's answer worth reading


class OutcomeWriter:
    """Writes attempt outcomes in batches: whatever finished while the previous write was
    in flight goes in the next single statement. `recorded` gets the ids of each batch
    once it is written (rows no longer ours are logged and left alone)."""

    def __init__(self, store: Store, instance_id: str,
                 recorded: Callable[[list[str]], None]) -> None:
        self.store = store
        self.instance_id = instance_id
        self.recorded = recorded
        self._queue: list[Outcome] = []
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()  # nothing queued or being written
        self._idle.set()

    def add(self, outcome: Outcome) -> None:
        self._queue.append(outcome)
        self._idle.clear()
        self._ready.set()

    async def flush(self) -> None:
        """Wait until every outcome added so far is written."""
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._queue = self._queue, []
            written = await self._write(batch)
            for outcome in batch:
                if written is not None and outcome.id not in written:
                    # our lease ran out and another instance took it over, or a replay
                    log.warning("delivery_outcome_superseded", delivery_id=outcome.id)
            self.recorded([o.id for o in batch])
            if not self._queue:
                self._idle.set()

    async def _write(self, batch: list[Outcome]) -> set[str] | None:
        """Write a batch, again every second while the database cannot take it; None when
        it never will: values the database refuses, or an unexpected exception (logged
        with its traceback). The writer goes on with the next batch: the daemon exits
        only on a signal or a startup error (README "Hostile data"), and one batch must not
        hold up every later outcome, and so every attempt. The deliveries of a batch
        given up stay claimed until their lease runs out, then are attempted again with
        the same webhook-id, as after a crash (README "Delivery guarantees")."""
        while True:
            try:
                return await self.store.deliveries.record_outcomes(batch, self.instance_id)
            except DB_ERRORS as exc:
                if not refused_values(exc):
                    log.warning("delivery_outcomes_not_recorded", count=len(batch),
                                error=str(exc))
                    await asyncio.sleep(1)
                    continue
                log.error("delivery_outcomes_failed", count=len(batch), error=str(exc)[:300])
            except Exception as exc:
                log.error("delivery_outcomes_failed", count=len(batch),
                          error=f"{type(exc).__name__}: {exc}"[:300], exc_info=True)
            return None


class Deliverer:
    """Keeps at most `webhook.concurrency` attempts in flight. A destination starts at
    most half of them while another has work due; it may take the rest only when it
    answers well and nothing else is due. None start to a destination whose breaker is
    open, except its probe."""

    def __init__(
        self,
        store: Store,
        config: Callable[[], Config],
        *,
        instance_id: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_outcome: Callable[[Claimed, Attempt, str], None] = lambda *_: None,
        on_breakers: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.config = config
        self.instance_id = instance_id
        self.clock = clock
        self.on_outcome = on_outcome
        self.on_breakers = on_breakers
        self.breakers = Breakers()
        self._busy: Counter[str] = Counter()  # attempts in flight per destination
        self._urls: dict[str, set[str]] = {}  # the URLs seen for each destination
        self._attempting: set[str] = set()  # ids of the deliveries in flight or being recorded
        self._buffer: dict[str, tuple[Claimed, float]] = {}  # claimed, not started yet
        self._outcomes = OutcomeWriter(store, instance_id, self._recorded)
        self._wake = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], str] = {}  # attempts: the delivery ids
        self._cap: Callable[[str], int] = lambda _: 0  # the running claim round's caps
        self._fill_again = False  # woken while a fill was running
        self._fill_error: str | None = None  # what the last fill raised, if it did
        self._signer = Signer(())
        self._session: aiohttp.ClientSession | None = None
        self._stopping = Stopping()  # its own, until run() is given the daemon's

    def wake(self) -> None:
        """New work may be due (called after the outbox is written)."""
        self._wake.set()

    async def run(self, stopping: Stopping | None = None) -> None:
        """Deliver until the stop begins (`stopping`, or `stop()`), then let the attempts in
        flight finish by its deadline."""
        if stopping is not None:
            self._stopping = stopping
        self._stopping.on_set(self._wake.set)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        # No aiohttp timeouts: each attempt has its own deadline (webhook.timeout).
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout())
        writer = asyncio.create_task(self._outcomes.run())
        fill: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                # Cleared first: a wake-up or a finished attempt during a fill is seen.
                self._wake.clear()
                if fill is None or fill.done():
                    self._fill_again = False
                    fill = asyncio.create_task(self._fill())
                    fill.add_done_callback(self._filled)
                else:
                    # A claim is in flight: start what memory holds meanwhile, and fill
                    # again once it is done.
                    self._fill_again = True
                    config = self.config()
                    self._start_buffered(config, self._cap, self.clock(),
                                         self._signer_for(config))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_WAIT):
                        await self._wake.wait()
        finally:
            try:
                if fill is not None:
                    await asyncio.gather(fill, return_exceptions=True)
                await self._drain()
            finally:  # also when the daemon cancels the drain at its deadline
                await cancel([writer, *self._inflight])
                if self._session is not None:
                    await self._session.close()

    def _recorded(self, ids: list[str]) -> None:
        self._attempting.difference_update(ids)
        self._wake.set()  # attempts may have waited for these outcomes

    def _unrecorded_full(self, concurrency: int) -> bool:
        return len(self._attempting) - len(self._inflight) >= UNRECORDED_MAX * concurrency

    def _filled(self, fill: asyncio.Task[None]) -> None:
        """A claim round ended. One that raised is logged with its traceback (once until
        its error changes) and the next round runs at the next wake-up or within
        IDLE_WAIT, as after a failed cycle: the daemon exits only on a signal or a startup
        error (README "Hostile data")."""
        exc = None if fill.cancelled() else fill.exception()
        error = None if exc is None else f"{type(exc).__name__}: {exc}"[:300]
        if error is not None and error != self._fill_error:
            log.error("delivery_claim_round_failed", error=error, exc_info=exc)
        self._fill_error = error
        if self._fill_again:
            self._wake.set()

    def stop(self) -> None:
        """Stop taking work; `run` returns once in-flight attempts finish or time out
        (within `shutdown_timeout`)."""
        self._stopping.set(self.config().shutdown_timeout)

    async def _fill(self) -> None:
        config = self.config()
        concurrency = config.webhook.concurrency
        share = max(1, concurrency // 2)
        if await self._claim_round(config, lambda _: share):
            # Nobody else waits: a destination that answers well may use every free slot.
            await self._claim_round(
                config, lambda dest: share if self.breakers.failing(dest) else concurrency)

    async def _claim_round(self, config: Config, cap: Callable[[str], int]) -> bool:
        """Start due deliveries while slots are free, each destination up to
        `cap(destination)` in flight; True when due work ran out before the free slots.

        Claims run one round ahead (up to `concurrency` rows more than the free slots, and
        while every slot is busy, memory is refilled up to twice `concurrency` rows) so
        that a finished attempt is followed by a start from memory, not by a query; rows
        held back longer than BUFFER_MAX_AGE go back to the table."""
        lease = timedelta(seconds=config.webhook.timeout) + LEASE_MARGIN
        concurrency = config.webhook.concurrency
        signer = self._signer_for(config)
        self._cap = cap
        await self._return_stale()
        while True:
            now = self.clock()
            self._start_buffered(config, cap, now, signer)
            if self._unrecorded_full(concurrency):
                return False
            free = concurrency - len(self._inflight)
            if free > 0:
                limit = free + concurrency
            elif len(self._buffer) < concurrency:
                # Every slot is busy: refill memory before the next attempts finish.
                limit = 2 * concurrency - len(self._buffer)
            else:
                return False
            full = [url for dest, urls in self._urls.items()
                    if self._full(dest, now, cap, ahead=free <= 0, concurrency=concurrency)
                    for url in urls]
            try:
                claimed = await self.store.deliveries.claim(
                    instance=self.instance_id, now=now, lease=lease, limit=limit,
                    default_url=config.webhook.url, exclude=full,
                    max_age=timedelta(seconds=config.webhook.max_delivery_age),
                )
            except DB_ERRORS as exc:
                log.debug("delivery_claim_failed", error=str(exc))  # the health loop reports it
                return False
            held = time.monotonic()
            for row in claimed:
                if row.id not in self._attempting and row.id not in self._buffer:
                    self._buffer[row.id] = (row, held)
            if not claimed:
                return True

    def _signer_for(self, config: Config) -> Signer:
        if self._signer.secrets != config.webhook.secrets:
            self._signer = Signer(config.webhook.secrets)
        return self._signer

    def _start_buffered(self, config: Config, cap: Callable[[str], int], now: datetime,
                        signer: Signer) -> None:
        """Start the held-back rows that have a free slot and an allowance, oldest first."""
        concurrency = config.webhook.concurrency
        if len(self._inflight) >= concurrency or self._unrecorded_full(concurrency):
            return
        blocked: set[str] = set()  # destinations without an allowance left
        for row_id, (row, _) in list(self._buffer.items()):
            url = row.url or config.webhook.url
            dest = destination(url)
            if dest in blocked:
                continue
            self._urls.setdefault(dest, set()).add(url)
            if self._allowance(dest, now, cap) <= 0:
                blocked.add(dest)
                continue
            del self._buffer[row_id]
            self.breakers.admit(dest)
            self._busy[dest] += 1
            task = asyncio.create_task(self._deliver(row, dest, config, signer))
            self._inflight[task] = row.id
            self._attempting.add(row.id)
            task.add_done_callback(self._finished)
            if len(self._inflight) >= config.webhook.concurrency:
                return

    def _finished(self, task: asyncio.Task[None]) -> None:
        """An attempt ended. One that raised (a bug: it has no outcome) is logged with its
        traceback; its delivery is attempted again once its lease runs out."""
        delivery_id = self._inflight.pop(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("delivery_attempt_failed", delivery_id=delivery_id,
                      error=f"{type(exc).__name__}: {exc}"[:300], exc_info=exc)
        self._wake.set()

    async def _return_stale(self, everything: bool = False) -> None:
        """Give back held-back rows that waited too long (their destination stayed busy or
        its breaker opened), so their lease never runs out in our hands."""
        limit = time.monotonic() - BUFFER_MAX_AGE
        stale = []
        for row_id, (_, held) in self._buffer.items():  # held back in this order
            if not everything and held >= limit:
                break
            stale.append(row_id)
        for row_id in stale:
            del self._buffer[row_id]
        if stale:
            await self._unclaim(stale)

    def _full(self, dest: str, now: datetime, cap: Callable[[str], int], *, ahead: bool,
              concurrency: int) -> bool:
        """Whether `dest` may start no more attempts now; claiming `ahead` (every slot
        busy), a destination allowed every slot is not full: its next start is as soon as
        one of its attempts finishes."""
        if self._allowance(dest, now, cap) > 0:
            return False
        return not ahead or self.breakers.is_open(dest) or cap(dest) < concurrency

    def _allowance(self, dest: str, now: datetime, cap: Callable[[str], int]) -> int:
        """How many more attempts to `dest` may start now."""
        if self.breakers.is_open(dest):
            return 0 if self.breakers.blocked(dest, now) else 1 - self._busy[dest]
        return cap(dest) - self._busy[dest]

    async def _unclaim(self, ids: list[str]) -> None:
        try:
            await self.store.deliveries.unclaim(self.instance_id, ids)
        except DB_ERRORS as exc:
            log.debug("delivery_unclaim_failed", error=str(exc))  # their lease runs out

    async def _drain(self) -> None:
        """Give back what memory holds, let the attempts in flight finish and their outcomes
        be written, by the stop's deadline; attempts still running then are cancelled (their
        claims are given back at exit, or their lease runs out)."""
        self._stopping.set(self.config().shutdown_timeout)  # a stop, if none began: a failure
        await self._return_stale(everything=True)
        deadline = time.monotonic() + self._stopping.remaining()
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=deadline - time.monotonic())
            await cancel(pending)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outcomes.flush(), max(0.0, deadline - time.monotonic()))

    async def _deliver(self, row: Claimed, dest: str, config: Config, signer: Signer) -> None:
        """One attempt; its outcome goes to the writer and the slot is free at once. A
        delivery to an agent's own URL whose host `webhook.allowed_override_hosts` does not
        (or no longer) allow is dead-lettered unsent (its destination's breaker is not
        fed): a replay, or a reload that narrows the list, never sends to it."""
        refused = None if row.url is None else override_url_error(row.url, config)
        try:
            try:
                if refused is None:
                    attempt = await self._post(row, config, signer)
                    now = self.clock()
                    self._count(dest, attempt, now, config)
                else:
                    attempt, now = Attempt("error", None, refused, sent=False), self.clock()
                    self.breakers.unsent(dest)
            finally:
                self._busy[dest] -= 1
            status, next_at = (("dead", None) if refused is not None
                               else decide(attempt, row.attempts, config, now))
            self.on_outcome(row, attempt, status)
            # Successes are counted by the metrics; a log line each would cost more than
            # the database write, and even a filtered-out call binds a logger, so they are
            # logged only at level debug. Failures are worth a line.
            if status != "delivered" or config.logging.level == "debug":
                (log.debug if status == "delivered" else log.info)(
                    "delivery_attempt", delivery_id=row.id, attempt=row.attempts + 1,
                    result=attempt.result, http_status=attempt.http_status, outcome=status,
                    error=attempt.error)
            self._outcomes.add(
                Outcome(row.id, status, attempt.http_status, attempt.error, next_at, now))
        except BaseException:
            self._attempting.discard(row.id)  # no outcome to write: its lease runs out
            raise

    def _count(self, dest: str, attempt: Attempt, now: datetime, config: Config) -> None:
        """Feed the destination's breaker; log and report when it turns."""
        turned = self.breakers.record(dest, failed(attempt), now, config)
        if turned is None:
            return
        if turned == "opened":
            log.warning("breaker_opened", destination=dest, error=attempt.error,
                        probe_every=config.webhook.breaker_probe)
        else:
            log.info("breaker_closed", destination=dest)
        self.on_breakers(self.breakers.open_count())

    async def _post(self, row: Claimed, config: Config, signer: Signer) -> Attempt:
        assert self._session is not None
        started = time.monotonic()
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
                error = (None if 200 <= code < 300
                         else one_line(f"HTTP {code} {response.reason or ''}"))
                header = response.headers.get("Retry-After")
                retry_after = retry_after_seconds(header, self.clock()) if header else None
                return Attempt(f"{code // 100}xx" if 200 <= code < 600 else "error", code, error,
                               retry_after, time.monotonic() - started)
        except TimeoutError:
            return Attempt("timeout", None, f"no answer within {config.webhook.timeout:g}s",
                           seconds=time.monotonic() - started)
        except aiohttp.ClientError as exc:
            return Attempt("error", None, request_error(exc, url),
                           seconds=time.monotonic() - started)


# Their messages name the host and port at most.
_PLAIN_ERRORS = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError,
                 aiohttp.ClientPayloadError)


def request_error(exc: aiohttp.ClientError, url: str) -> str:
    """A request that failed, as `last_error` and the log show it: its kind and the
    destination's host, never the URL, whose userinfo, path or query may hold an agent's
    token (README "Reliability": secrets). An invalid URL or a malformed answer (aiohttp
    writes the URL into those messages) says what was wrong without it."""
    name = type(exc).__name__
    if isinstance(exc, _PLAIN_ERRORS):
        return one_line(f"{name}: {exc}")
    if isinstance(exc, aiohttp.InvalidURL):
        detail = ": invalid URL"
    elif isinstance(exc, aiohttp.ClientResponseError):
        detail = f": {exc.status} {exc.message}"
    else:
        detail = ""
    return one_line(f"{name}{detail} (host {hostname(url) or 'unknown'})")


async def _drain_body(response: aiohttp.ClientResponse) -> None:
    """Read the answer to its end (bounded): a response cut short is a connection error,
    not a success."""
    read = 0
    while chunk := await response.content.read(16384):
        read += len(chunk)
        if read > MAX_ANSWER:
            return
