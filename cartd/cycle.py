"""One poll cycle (README "How it works"): claim the due agents, fetch their integrations,
keep the abandoned carts, and record the new ones with their webhooks (the outbox), a
group of carts per transaction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

from cartd import payload
from cartd.config import Config
from cartd.db import AgentWork, NewDelivery, SourcePoll, SourceState, Store, one_line
from cartd.model import Cart, iso
from cartd.rules import AgentCard, Rules, agent_card, agent_rules
from cartd.services import cancel
from cartd.sources import Integration, IntegrationError, Read, fetch, mock_stores

log = structlog.get_logger("cartd.cycle")

BATCH = 500  # agents per claim at most
CHUNKS = 4  # a share is claimed in about this many claims, so late starters get theirs
LIVE_SLACK = timedelta(seconds=5)  # an instance counts as polling this long past 2 intervals
CART_BATCH = 2000  # about this many carts are held in memory and recorded per transaction
WRITERS = 2  # group transactions of a cycle in flight at once
CURSOR_OVERLAP = timedelta(minutes=5)


@dataclass
class CycleSummary:
    cycle_id: str
    started_at: str
    duration_seconds: float = 0.0
    agents_found: int = 0
    integrations_processed: int = 0
    platforms_processed: int = 0
    integration_errors: int = 0
    carts_found: int = 0
    carts_new: int = 0
    carts_recovered: int = 0
    recovery_value: dict[str, Decimal] = field(default_factory=dict)
    deliveries_enqueued: int = 0
    # For the metrics: (platform, outcome) fetches, (platform, currency) values, the
    # deliveries dead-lettered as they were recorded (an agent URL not allowed).
    dead_lettered: int = field(default=0, repr=False)
    platforms: set[str] = field(default_factory=set, repr=False)
    polls: Counter[tuple[str, str]] = field(default_factory=Counter, repr=False)
    new_by_platform: Counter[str] = field(default_factory=Counter, repr=False)
    recovered_by_platform: Counter[str] = field(default_factory=Counter, repr=False)
    value_by: dict[tuple[str, str], Decimal] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for private in ("platforms", "polls", "new_by_platform", "recovered_by_platform",
                        "value_by", "dead_lettered"):
            del data[private]
        data["recovery_value"] = {k: float(v) for k, v in sorted(self.recovery_value.items())}
        return data

    def sifted(self, job: Job) -> None:
        """An integration fetched and its carts sifted."""
        platform = job.integration.platform
        self.integrations_processed += 1
        self.platforms.add(platform)
        self.polls[(platform, "ok")] += 1
        self.carts_found += len(job.keep)

    def failed(self, failure: SourcePoll) -> None:
        self.integration_errors += 1
        self.polls[(failure.platform, "error")] += 1

    def recorded(self, group: Group) -> None:
        """What a group's transaction committed: its new and recovered carts, its webhooks."""
        for platform, fresh, back in group.carts:
            self.carts_new += len(fresh)
            self.carts_recovered += len(back)
            self.new_by_platform[platform] += len(fresh)
            self.recovered_by_platform[platform] += len(back)
            for cart in fresh:
                value, currency = cart.total_value, cart.currency
                self.recovery_value[currency] = self.recovery_value.get(currency, Decimal(0)) + value
                key = (platform, currency)
                self.value_by[key] = self.value_by.get(key, Decimal(0)) + value
        self.deliveries_enqueued += len(group.enqueued)
        self.dead_lettered += sum(d.status == "dead" for d in group.deliveries)

    def finish(self, seconds: float) -> None:
        self.platforms_processed = len(self.platforms)
        self.duration_seconds = round(seconds, 3)


def _one_line(exc: BaseException) -> str:
    """An exception as one bounded line: its message, else its type."""
    text = " ".join(str(exc).split())[:300]
    return text or type(exc).__name__


@dataclass
class Job:
    """One integration of one claimed agent, through the cycle."""

    agent: Any
    rules: Rules
    card: AgentCard
    integration: Integration
    state: SourceState
    opened_at: datetime | None = None  # a mock store's (cartd.sources.mock_stores)
    fetched: Read | None = None
    through: datetime | None = None
    read_at: datetime | None = None
    resume: dict[str, Any] | None = None
    keep: list[Cart] = field(default_factory=list)
    completed: list[Cart] = field(default_factory=list)

    def sift(self, config: Config, now: datetime) -> None:
        """Keep the fetched abandoned (and completed) carts, drop the rest."""
        assert self.fetched is not None
        fetched, self.fetched = self.fetched, None
        carts, self.resume = fetched.carts, fetched.resume
        self.through, self.read_at = fetched.through, fetched.read_at
        drop_reason = self.rules.drop_reason
        self.keep = [c for c in carts if drop_reason(c, now) is None]
        if config.carts.send_recovered:
            self.completed = [c for c in carts if c.completed_at is not None]

    def next_cursor(self) -> datetime | None:
        """As far as the store was read, less what was not yet idle long enough when it was
        read (it must be read again); a read that got no further keeps the cursor."""
        if self.through is None or self.read_at is None:
            return self.state.cursor
        return min(self.through, self.read_at - self.rules.abandoned_after)

    def poll(self) -> SourcePoll:
        """The integration's successful poll: its next cursor."""
        integration = self.integration
        return SourcePoll(integration.id, self.agent.id, integration.platform, integration.mode,
                          self.next_cursor(), self.resume)


async def fetch_job(job: Job, config: Config, now: datetime) -> Exception | None:
    """Fetch a job's carts from its cursor (or where its last read stopped) into
    `job.fetched`; the error when it failed: an IntegrationError, or an unexpected one (a
    bug, or input no check foresaw), which costs this integration only."""
    since = job.state.cursor - CURSOR_OVERLAP if job.state.cursor else None
    try:
        job.fetched = await fetch(job.integration, config=config, since=since,
                                  opened_at=job.opened_at, now=now, resume=job.state.resume)
    except Exception as exc:
        return exc
    malformed, iid = job.fetched.malformed, str(job.integration.id)
    if malformed:
        log.warning("malformed_records_skipped", integration_id=iid,
                    platform=job.integration.platform, count=malformed.total(),
                    reasons=dict(malformed))
    if job.fetched.stopped:
        log.info("store_read_continues_next_cycle", integration_id=iid,
                 platform=job.integration.platform, carts=len(job.fetched.carts),
                 reason=job.fetched.stopped)
    return None


Candidate = tuple[Any, Rules, AgentCard, Integration]


def _candidates(agents: list[Any], config: Config, taken: set[Any],
                unpolled: list[SourcePoll]) -> list[Candidate]:
    """The integrations of these agents that can be fetched; the others go to `unpolled`."""
    candidates: list[Candidate] = []
    for agent in agents:
        try:
            rules, card = agent_rules(agent.settings, config), agent_card(agent)
        except Exception as exc:  # ValueError names the bad value; others are bugs
            expected = isinstance(exc, ValueError)
            log.log(logging.WARNING if expected else logging.ERROR, "agent_skipped",
                    agent_id=str(agent.id), error=_one_line(exc), exc_info=not expected)
            unpolled += [_failure(agent, row, f"agent: {_one_line(exc)}")
                         for row in agent.integrations]
            continue
        for row in agent.integrations:
            try:
                integration = Integration.from_row(row, config)
            except IntegrationError as exc:
                unpolled.append(_failure(agent, row, str(exc)))
                continue
            if integration.id in taken:
                log.warning("integration_listed_twice", agent_id=str(agent.id),
                            integration_id=str(integration.id))
                continue
            taken.add(integration.id)
            candidates.append((agent, rules, card, integration))
    return candidates


async def plan(store: Store, agents: list[Any], config: Config,
               taken: set[Any] | None = None, *, opening: datetime | None = None,
               ) -> tuple[list[Job], list[SourcePoll]]:
    """The jobs of these agents' integrations (with their cursors), and the failed polls
    of those that cannot even be fetched (bad agent rows or settings, bad integration
    config); a bad agent or integration fails alone. An integration in `taken` (polled
    before in this cycle: a view may list it twice) is skipped, and the others are added.
    A cycle polls `opening` (now): a mock store polled for the first time opens then;
    without it (a preview) nothing is written."""
    unpolled: list[SourcePoll] = []
    candidates = _candidates(agents, config, set() if taken is None else taken, unpolled)
    mocks = [i.id for *_, i in candidates if i.mode == "mock"]
    opening_times = asyncio.ensure_future(  # read side by side with the cursors
        mock_stores.known(store, mocks) if opening is None
        else mock_stores.opened(store, mocks, opening))
    try:
        states = await store.agents.source_states([i.id for *_, i in candidates])
        opened = await opening_times
    finally:
        await cancel([opening_times])
    jobs = [Job(a, r, c, i, states.get(i.id, SourceState(None)), opened.get(i.id))
            for a, r, c, i in candidates]
    return jobs, unpolled


def _failure(agent: Any, integration: Any, error: str) -> SourcePoll:
    """The failed poll of an integration (a row of the claim, or an Integration); its
    integration_id is None when the row's id is not a UUID (nothing can be kept for it)."""
    if isinstance(integration, Integration):
        return SourcePoll(integration.id, agent.id, integration.platform, integration.mode,
                          error=one_line(error))
    try:
        ident = uuid.UUID(str(integration.get("id")))
    except ValueError:
        ident = None
    return SourcePoll(ident, agent.id, str(integration.get("platform"))[:40], None,
                      error=one_line(error))


def build_deliveries(job: Job, config: Config, now: datetime, event: str,
                     carts: list[Cart], hold_for: str | None = None) -> list[NewDelivery]:
    """The webhooks of `carts` for one job: one per currency, split at
    `webhook.max_carts_per_payload`."""
    if not carts:
        return []
    agent, integration = job.agent, job.integration
    integration_info = {"id": str(integration.id), "platform": integration.platform,
                        "mode": integration.mode}
    by_currency: dict[str, list[Cart]] = defaultdict(list)
    for cart in carts:
        by_currency[cart.currency].append(cart)
    size = config.webhook.max_carts_per_payload
    out = []
    for group in by_currency.values():
        for start in range(0, len(group), size):
            chunk = group[start:start + size]
            out.append(NewDelivery(
                id=payload.new_webhook_id(), type=event, agent_id=agent.id,
                integration_id=integration.id, platform=integration.platform,
                url=job.rules.url, carts=len(chunk),
                body=payload.build(event=event, now=now, agent=job.card.agent,
                                   company=job.card.company, integration=integration_info,
                                   carts=chunk),
                status="dead" if job.rules.url_error else "pending",
                last_error=job.rules.url_error, hold_for=hold_for,
            ))
    return out


_NONE: frozenset[str] = frozenset()


@dataclass
class Group:
    """Jobs recorded in one transaction, and what it wrote: its deliveries, and per job
    the carts that were new and those that came back (counted once it commits)."""

    config: Config
    now: datetime
    jobs: list[Job] = field(default_factory=list)
    held: int = 0  # carts held in memory
    deliveries: list[NewDelivery] = field(default_factory=list)
    carts: list[tuple[str, list[Cart], list[Cart]]] = field(default_factory=list)

    def add(self, job: Job) -> None:
        self.jobs.append(job)
        self.held += len(job.keep) + len(job.completed)

    @property
    def enqueued(self) -> list[str]:
        """The ids of the deliveries written to go (not dead-lettered at once)."""
        return [d.id for d in self.deliveries if d.status == "pending"]

    def build(self, new: dict[Any, set[str]], recovered: dict[Any, set[str]],
              held: dict[Any, dict[str, set[str]]]) -> list[NewDelivery]:
        """The deliveries of the carts the transaction found new or recovered, and of
        those whose `recovered` event waits for a detected delivery in flight
        (`Outbox.record`'s `build`)."""
        config, now, out = self.config, self.now, []
        self.carts = []
        for job in self.jobs:
            iid = job.integration.id
            got, back_ids = new.get(iid, _NONE), recovered.get(iid, _NONE)
            fresh = [c for c in job.keep if c.cart_id in got]
            back = [c for c in job.completed if c.cart_id in back_ids]
            self.carts.append((job.integration.platform, fresh, back))
            out += build_deliveries(job, config, now, payload.DETECTED, fresh)
            out += build_deliveries(job, config, now, payload.RECOVERED, back)
            for detected_id, waiting in held.get(iid, {}).items():
                out += build_deliveries(job, config, now, payload.RECOVERED,
                                        [c for c in job.completed if c.cart_id in waiting],
                                        hold_for=detected_id)
        return out


class Cycle:
    """One poll cycle, from the first claim to the last commit: its config and clock
    reading (`now`), its summary and its writers (the group transactions in flight).

    The next claim and up to WRITERS transactions run while a batch is fetched and sifted:
    the database and this process work side by side. The summary counts what each
    transaction committed, once it has."""

    def __init__(self, store: Store, config: Config, now: datetime, *, instance_id: str,
                 lease: timedelta, force: bool = False,
                 on_enqueued: Callable[[list[NewDelivery]], None] = lambda _: None) -> None:
        self.store = store
        self.config = config
        self.now = now
        self.instance_id = instance_id
        self.lease = lease
        self.force = force
        self.on_enqueued = on_enqueued
        self.interval = timedelta(seconds=config.polling.interval)
        self.summary = CycleSummary(cycle_id=uuid.uuid4().hex[:12], started_at=iso(now))
        self.delivery_ids: list[str] = []  # of the deliveries enqueued
        self._writers: deque[asyncio.Task[Group]] = deque()
        self._failures: list[SourcePoll] = []  # recorded with the next group, for their health
        self._taken: set[Any] = set()  # integrations polled: a view may list one twice

    async def run(self) -> tuple[CycleSummary, list[str]]:
        """Poll every due agent (every matching agent when `force`); returns the summary
        and the ids of the deliveries enqueued."""
        started = time.monotonic()
        await self.store.agents.register(self.config.polling.template_slug)
        claimed = 0
        claim = asyncio.create_task(self._claim(claimed))
        try:
            while agents := await claim:
                claimed += len(agents)
                claim = asyncio.create_task(self._claim(claimed))
                await self._batch(agents)
            while self._writers:
                await self._written()
        finally:
            await cancel([claim, *self._writers])
        self.summary.finish(time.monotonic() - started)
        return self.summary, self.delivery_ids

    async def _claim(self, claimed: int) -> list[AgentWork]:
        """The next batch of agents to poll; empty when there is none (or no share left)."""
        limit = BATCH if self.force else await self._claim_size(claimed)
        if not limit:
            return []
        return await self.store.agents.claim(
            slug=self.config.polling.template_slug, instance=self.instance_id, now=self.now,
            interval=self.interval, lease=self.lease, limit=limit, force=self.force)

    async def _claim_size(self, claimed: int) -> int:
        """How many agents to claim next: several instances split the agents evenly (a
        share is asked for before every claim, so instances that start or stop are seen
        within one cycle). Agents beyond the shares wait for the next claim of anyone."""
        share = await self.store.agents.poll_share(
            slug=self.config.polling.template_slug, instance=self.instance_id, now=self.now,
            live_until=self.now + 2 * self.interval + LIVE_SLACK)
        return max(0, min(BATCH, max(1, -(-share // CHUNKS)), share - claimed))

    async def _batch(self, agents: list[AgentWork]) -> None:
        """Fetch the agents' integrations and record them in groups of about CART_BATCH
        carts, one transaction each, so that memory holds a few groups whatever the batch
        brings; the batch's last group gives the agents back."""
        self.summary.agents_found += len(agents)
        planned, unpolled = await plan(self.store, agents, self.config, self._taken,
                                       opening=self.now)
        waiting = deque(planned)
        del planned  # a job, and its carts, leaves memory once its group is written
        for poll in unpolled:
            self._failed(poll)
        group = Group(self.config, self.now)
        async with contextlib.aclosing(self._sifted(waiting)) as sifted:
            async for job in sifted:
                group.add(job)
                if group.held >= CART_BATCH:
                    await self._write(group, [])
                    group = Group(self.config, self.now)
        await self._write(group, [a.id for a in agents])

    async def _sifted(self, waiting: deque[Job]) -> AsyncIterator[Job]:
        """The jobs of `waiting` (taken from it) fetched and sifted, as they come. At most
        `source_concurrency` are being fetched or wait to be sifted; the next fetch starts
        as soon as one is taken, so a slow store holds one slot, not the others."""
        ahead = self.config.polling.source_concurrency
        done: asyncio.Queue[Job] = asyncio.Queue()
        fetching: set[asyncio.Task[None]] = set()
        out = 0  # fetches started and not yet taken from `done`
        try:
            while waiting or out:
                while waiting and out < ahead:
                    task = asyncio.create_task(self._fetch(waiting.popleft(), done))
                    fetching.add(task)
                    task.add_done_callback(fetching.discard)
                    out += 1
                job = await done.get()
                out -= 1
                if job.fetched is not None and self._sift(job):
                    yield job
        finally:
            await cancel(fetching)

    async def _fetch(self, job: Job, done: asyncio.Queue[Job]) -> None:
        try:
            error = await fetch_job(job, self.config, self.now)
            if error is not None:
                self._failed(_failure(job.agent, job.integration, _one_line(error)), error)
        finally:
            done.put_nowait(job)

    def _sift(self, job: Job) -> bool:
        """Sift a fetched job's carts; False when a bug stopped it (it costs this
        integration, not the batch)."""
        try:
            job.sift(self.config, self.now)
        except Exception as exc:
            self._failed(_failure(job.agent, job.integration, _one_line(exc)), exc)
            return False
        self.summary.sifted(job)
        return True

    def _failed(self, poll: SourcePoll, exc: Exception | None = None) -> None:
        """Count and log a failed integration, to be recorded with the next group; an
        unexpected exception (not an IntegrationError) is logged at error level with its
        traceback."""
        unexpected = exc is not None and not isinstance(exc, IntegrationError)
        self.summary.failed(poll)
        self._failures.append(poll)
        log.log(logging.ERROR if unexpected else logging.WARNING, "integration_failed",
                agent_id=str(poll.agent_id), platform=poll.platform,
                integration_id=str(poll.integration_id), error=poll.error,
                exc_info=exc if unexpected else False)

    async def _write(self, group: Group, release: list[Any]) -> None:
        """Record `group`, and the failures since the last one, in a transaction of its
        own once fewer than WRITERS are in flight."""
        while len(self._writers) >= WRITERS:
            await self._written()
        failures, self._failures = self._failures, []
        self._writers.append(asyncio.create_task(self._record(group, release, failures)))

    async def _written(self) -> None:
        """Wait for the oldest transaction in flight, and count what it committed."""
        group = await self._writers[0]
        self._writers.popleft()
        self.summary.recorded(group)
        self.delivery_ids += group.enqueued
        self.on_enqueued(group.deliveries)

    async def _record(self, group: Group, release: list[Any],
                      failures: list[SourcePoll]) -> Group:
        """One transaction: the group's new carts, recoveries, deliveries, cursors and
        health (and the failures'), and the release of `release`'s claims."""
        keys = await self.store.subjects.keys()
        email, customer = keys.email, keys.customer
        jobs = group.jobs
        group.deliveries = await self.store.outbox.record(
            now=self.now,
            detected=[(j.integration.id, c.cart_id, email(c.customer.email),
                       customer(c.customer.id)) for j in jobs for c in j.keep],
            completed=[(j.integration.id, c.cart_id) for j in jobs for c in j.completed],
            build=group.build,
            sources=[j.poll() for j in jobs]
            + [f for f in failures if f.integration_id is not None],
            agents=release,
            instance=self.instance_id,
        )
        return group
