"""The cycle of SPEC §1: claim due agents, fetch, filter, dedupe, record the outbox."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import structlog

from cartd import payload
from cartd.config import Config, parse_duration
from cartd.db import DB_ERRORS, AgentWork, NewDelivery, SourcePoll, SourceState, Store
from cartd.model import MAX_TEXT, MAX_URL, Cart, clean, iso
from cartd.sources import Fetched, Integration, IntegrationError, fetch, mock_stores

log = structlog.get_logger("cartd.poller")

BATCH = 500  # agents per claim at most
CHUNKS = 4  # a share is claimed in about this many claims, so late starters get theirs
LIVE_SLACK = timedelta(seconds=5)  # an instance counts as polling this long past 2 intervals
CART_BATCH = 2000  # about this many carts are held in memory and recorded per transaction
WRITERS = 2  # group transactions of a cycle in flight at once
CURSOR_OVERLAP = timedelta(minutes=5)
AGENT_LEASE_FLOOR = timedelta(seconds=5)
LEASE_RENEWALS = 3  # a running cycle renews its agents' lease this often per lease
MAX_ABANDONED_AFTER = 3650 * 86400.0  # seconds; an agent's settings.abandoned_after


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
    # For the metrics: (platform, outcome) fetches, (platform, currency) values.
    platforms: set[str] = field(default_factory=set, repr=False)
    polls: Counter[tuple[str, str]] = field(default_factory=Counter, repr=False)
    new_by_platform: Counter[str] = field(default_factory=Counter, repr=False)
    recovered_by_platform: Counter[str] = field(default_factory=Counter, repr=False)
    value_by: dict[tuple[str, str], Decimal] = field(default_factory=dict, repr=False)
    # Integrations taken this cycle: one listed twice (a view, say) is polled once.
    taken: set[Any] = field(default_factory=set, repr=False)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for private in ("platforms", "polls", "new_by_platform", "recovered_by_platform",
                        "value_by", "taken"):
            del data[private]
        data["recovery_value"] = {k: float(v) for k, v in sorted(self.recovery_value.items())}
        return data


@dataclass(frozen=True, slots=True)
class Rules:
    """The cart filters and destination of one agent (config overridden by its settings)."""

    abandoned_after: timedelta
    max_age: timedelta
    min_value: Decimal
    require_contact: bool
    require_marketing_consent: bool
    url: str | None
    url_error: str | None

    def drop_reason(self, cart: Cart, now: datetime) -> str | None:
        """Why the cart is not an abandoned one to deliver (README "How it works"), or None
        when it is."""
        if cart.completed_at is not None:
            return "completed"
        idle = now - cart.last_activity
        if idle < self.abandoned_after:
            return "too recent"
        if idle > self.max_age:
            return "too old"
        if cart.total_value < self.min_value:
            return "too cheap"
        if self.require_contact and not cart.has_contact:
            return "no contact"
        if self.require_marketing_consent and not cart.customer.accepts_marketing:
            return "no consent"
        return None


def agent_rules(settings: Any, config: Config) -> Rules:
    """Apply an agent's `settings` overrides; raises ValueError naming a bad one."""
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise ValueError("settings must be a JSON object")
    carts = config.carts
    try:
        abandoned_after = parse_duration(settings.get("abandoned_after", carts.abandoned_after))
        if not 0 <= abandoned_after <= MAX_ABANDONED_AFTER:
            raise ValueError
    except (ArithmeticError, ValueError):
        raise ValueError("settings.abandoned_after must be a duration from 0 to 3650d") from None
    try:
        min_value = Decimal(str(settings.get("min_value", carts.min_value)))
        if not min_value.is_finite() or min_value < 0:
            raise ValueError
    except (ArithmeticError, ValueError):
        raise ValueError("settings.min_value must be a number >= 0") from None
    consent = settings.get("require_marketing_consent", carts.require_marketing_consent)
    if not isinstance(consent, bool):
        raise ValueError("settings.require_marketing_consent must be true or false")
    url, url_error = settings.get("webhook_url"), None
    if url is not None:
        host = _host(url)
        if not host or urlsplit(url).scheme not in ("http", "https"):
            url_error = "settings.webhook_url is not an http(s) URL"
        elif host not in config.webhook.allowed_override_hosts:
            url_error = f"settings.webhook_url host {host} is not in webhook.allowed_override_hosts"
    return Rules(
        abandoned_after=timedelta(seconds=abandoned_after),
        max_age=timedelta(seconds=carts.max_age),
        min_value=min_value,
        require_contact=carts.require_contact,
        require_marketing_consent=consent,
        url=url if isinstance(url, str) else None,
        url_error=url_error,
    )


def _host(url: Any) -> str | None:
    """The host of an http(s) URL of at most MAX_URL characters, else None."""
    if not isinstance(url, str) or len(url) > MAX_URL:
        return None
    try:
        return urlsplit(url).hostname
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        return None


class AgentCard(NamedTuple):
    """The `agent_info` and `company` objects of an agent's payloads."""

    agent: dict[str, Any]
    company: dict[str, Any]


def _app_text(value: Any, what: str, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} is not text")
    return clean(value, what, limit)


def agent_card(agent: AgentWork) -> AgentCard:
    """The agent's payload objects from its application rows; ValueError naming a field
    that a payload cannot carry (not text, too long)."""
    company = agent.company
    name = _app_text(company["name"], "company name")
    return AgentCard(
        {"id": str(agent.id), "name": _app_text(agent.name, "agent name"), "company": name,
         "company_id": company["id"], "template_slug": agent.template_slug},
        {"id": company["id"], "name": name,
         "website": _app_text(company["website"], "company website", MAX_URL),
         "email": _app_text(company["email"], "company email"),
         "phone": _app_text(company["phone"], "company phone")},
    )


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
    fetched: Fetched | None = None
    through: datetime | None = None
    read_at: datetime | None = None
    resume: dict[str, Any] | None = None
    keep: list[Cart] = field(default_factory=list)
    completed: list[Cart] = field(default_factory=list)


async def fetch_job(job: Job, config: Config, now: datetime) -> Exception | None:
    """Fetch a job's carts from its cursor (or where its last read stopped) into
    `job.fetched`; the error when it failed: an IntegrationError, or an unexpected one (a
    bug, or input no check foresaw), which costs this integration only."""
    since = job.state.cursor - CURSOR_OVERLAP if job.state.cursor else None
    try:
        job.fetched = await fetch(job.integration, config=config, since=since,
                                  opened_at=job.opened_at, now=now,
                                  resume=job.state.resume)
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


async def plan(store: Store, agents: list[Any], config: Config,
               taken: set[Any] | None = None, *, opening: datetime | None = None,
               ) -> tuple[list[Job], list[SourcePoll]]:
    """The jobs of these agents' integrations (with their cursors), and the failed polls
    of those that cannot even be fetched (bad agent rows or settings, bad integration
    config); a bad agent or integration fails alone. An integration in `taken` (polled
    before in this cycle: a view may list it twice) is skipped, and the others are added.
    A cycle polls `opening` (now): a mock store polled for the first time opens then;
    without it (a preview) nothing is written."""
    taken = set() if taken is None else taken
    candidates: list[tuple[Any, Rules, AgentCard, Integration]] = []
    unpolled: list[SourcePoll] = []
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
    states = await store.agents.source_states([i.id for *_, i in candidates])
    mocks = [i.id for *_, i in candidates if i.mode == "mock"]
    opened = await (mock_stores.known(store, mocks) if opening is None
                    else mock_stores.opened(store, mocks, opening))
    jobs = [Job(a, r, c, i, states.get(i.id, SourceState(None)), opened.get(i.id))
            for a, r, c, i in candidates]
    return jobs, unpolled


def _failure(agent: Any, integration: Any, error: str) -> SourcePoll:
    """The failed poll of an integration (a row of the claim, or an Integration); its
    integration_id is None when the row's id is not a UUID (nothing can be kept for it)."""
    if isinstance(integration, Integration):
        return SourcePoll(integration.id, agent.id, integration.platform, integration.mode,
                          error=error[:500])
    try:
        ident = uuid.UUID(str(integration.get("id")))
    except ValueError:
        ident = None
    return SourcePoll(ident, agent.id, str(integration.get("platform"))[:40], None,
                      error=error[:500])


class Poller:
    def __init__(
        self,
        store: Store,
        config: Callable[[], Config],
        *,
        instance_id: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_enqueued: Callable[[list[NewDelivery]], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.config = config
        self.instance_id = instance_id
        self.clock = clock
        self.on_enqueued = on_enqueued

    async def run_cycle(self, *, force: bool = False, now: datetime | None = None
                        ) -> tuple[CycleSummary, list[str]]:
        """Poll every due agent (every matching agent when `force`); returns the summary
        and the ids of the deliveries it enqueued."""
        config = self.config()
        now = now or self.clock()
        started = time.monotonic()
        summary = CycleSummary(cycle_id=uuid.uuid4().hex[:12], started_at=iso(now))
        interval = timedelta(seconds=config.polling.interval)
        # Renewed while the cycle runs, so a slow store keeps its agents, and a dead
        # instance's agents return once it runs out.
        lease = max(2 * interval, AGENT_LEASE_FLOOR)
        delivery_ids: list[str] = []
        await self.store.agents.register(config.polling.template_slug)
        # The next claim and up to WRITERS transactions run while a batch is fetched and
        # sifted: the database and this process work side by side.
        claimed = 0
        claim = asyncio.create_task(self._claim(config, now, interval, lease, force, claimed))
        writing: deque[asyncio.Task[list[NewDelivery]]] = deque()
        renewing = asyncio.create_task(self._keep_claims(lease))
        try:
            while agents := await claim:
                claimed += len(agents)
                claim = asyncio.create_task(
                    self._claim(config, now, interval, lease, force, claimed))
                delivery_ids += await self._batch(agents, config, now, summary, writing)
            while writing:
                delivery_ids += self._enqueued(await writing[0], summary)
                writing.popleft()
        finally:
            pending = [task for task in (claim, renewing, *writing) if not task.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        summary.platforms_processed = len(summary.platforms)
        summary.duration_seconds = round(time.monotonic() - started, 3)
        return summary, delivery_ids

    async def _keep_claims(self, lease: timedelta) -> None:
        """Renew the lease of the agents this cycle holds, LEASE_RENEWALS times per lease,
        until the cycle ends (their release ends it too)."""
        while True:
            await asyncio.sleep(lease.total_seconds() / LEASE_RENEWALS)
            try:
                await self.store.agents.renew(self.instance_id, self.clock() + lease)
            except DB_ERRORS as exc:  # the cycle's own statements report the database
                log.debug("agent_claims_not_renewed", error=str(exc))

    async def _claim(self, config: Config, now: datetime, interval: timedelta,
                     lease: timedelta, force: bool, claimed: int) -> list[AgentWork]:
        """The next batch of agents to poll; empty when there is none (or no share left)."""
        limit = BATCH if force else await self._claim_size(config, now, interval, claimed)
        if not limit:
            return []
        return await self.store.agents.claim(
            slug=config.polling.template_slug, instance=self.instance_id, now=now,
            interval=interval, lease=lease, limit=limit, force=force,
        )

    async def _claim_size(self, config: Config, now: datetime, interval: timedelta,
                          claimed: int) -> int:
        """How many agents to claim next: several instances split the agents evenly (a
        share is asked for before every claim, so instances that start or stop are seen
        within one cycle). Agents beyond the shares wait for the next claim of anyone."""
        share = await self.store.agents.poll_share(
            slug=config.polling.template_slug, instance=self.instance_id, now=now,
            live_until=now + 2 * interval + LIVE_SLACK,
        )
        return max(0, min(BATCH, max(1, -(-share // CHUNKS)), share - claimed))

    async def leave(self) -> None:
        """Polling stops here: the other instances take this one's share."""
        await self.store.agents.leave(self.instance_id)

    async def _batch(self, agents: list[Any], config: Config, now: datetime,
                     summary: CycleSummary,
                     writing: deque[asyncio.Task[list[NewDelivery]]]) -> list[str]:
        """Fetch the agents' integrations, `source_concurrency` at a time, and
        record them in groups of about CART_BATCH carts, one transaction each, so that
        memory holds a few groups whatever the batch brings. The transactions run in
        `writing` while the next groups are fetched, WRITERS at most; the batch's last one
        releases the agents. Returns the ids of the deliveries whose transaction ended."""
        summary.agents_found += len(agents)
        planned, unpolled = await plan(self.store, agents, config, summary.taken, opening=now)
        jobs = deque(planned)
        failures: list[SourcePoll] = []  # recorded with the next group, for their health
        for failure in unpolled:
            self._failed(summary, failure)
            failures.append(failure)
        # At most `source_concurrency` integrations are being fetched or waiting to be
        # sifted; the next fetch starts as soon as any one is taken, so a slow store holds
        # one slot, not the others.
        ahead = config.polling.source_concurrency
        fetched: asyncio.Queue[Job] = asyncio.Queue()
        fetching: set[asyncio.Task[None]] = set()
        delivery_ids: list[str] = []
        group: list[Job] = []
        held = 0

        async def fetch_one(job: Job) -> None:
            try:
                error = await fetch_job(job, config, now)
                if error is not None:
                    failure = _failure(job.agent, job.integration, _one_line(error))
                    self._failed(summary, failure, error)
                    failures.append(failure)
            finally:
                fetched.put_nowait(job)

        async def write(jobs: list[Job], release: list[Any]) -> None:
            while len(writing) >= WRITERS:
                delivery_ids.extend(self._enqueued(await writing[0], summary))
                writing.popleft()
            failed = failures[:]
            failures.clear()
            writing.append(asyncio.create_task(
                self._record(jobs, release, failed, config, now, summary)))

        out = 0  # fetches started and not yet taken from the queue
        try:
            while jobs or out:
                while jobs and out < ahead:
                    task = asyncio.create_task(fetch_one(jobs.popleft()))
                    fetching.add(task)
                    task.add_done_callback(fetching.discard)
                    out += 1
                job = await fetched.get()
                out -= 1
                if job.fetched is None:
                    continue
                try:
                    held += self._sift(job, config, now, summary)
                except Exception as exc:  # a bug costs this integration, not the batch
                    failure = _failure(job.agent, job.integration, _one_line(exc))
                    self._failed(summary, failure, exc)
                    failures.append(failure)
                    continue
                group.append(job)
                if held >= CART_BATCH:
                    await write(group, [])
                    group, held = [], 0
            await write(group, [a.id for a in agents])
        finally:
            for task in fetching:
                task.cancel()
            await asyncio.gather(*fetching, return_exceptions=True)
        return delivery_ids

    @staticmethod
    def _sift(job: Job, config: Config, now: datetime, summary: CycleSummary) -> int:
        """Keep the job's abandoned (and completed) carts, drop the rest; returns how many
        carts it still holds. Counts the integration once its carts are sifted."""
        assert job.fetched is not None
        fetched, job.fetched = job.fetched, None
        carts, job.resume = fetched.carts, fetched.resume
        job.through, job.read_at = fetched.through, fetched.read_at
        drop_reason = job.rules.drop_reason
        job.keep = [c for c in carts if drop_reason(c, now) is None]
        if config.carts.send_recovered:
            job.completed = [c for c in carts if c.completed_at is not None]
        platform = job.integration.platform
        summary.integrations_processed += 1
        summary.platforms.add(platform)
        summary.polls[(platform, "ok")] += 1
        summary.carts_found += len(job.keep)
        return len(job.keep) + len(job.completed)

    def _enqueued(self, enqueued: list[NewDelivery], summary: CycleSummary) -> list[str]:
        ids = [d.id for d in enqueued if d.status == "pending"]
        summary.deliveries_enqueued += len(ids)
        self.on_enqueued(enqueued)
        return ids

    async def _record(self, done: list[Job], agents: list[Any], failures: list[SourcePoll],
                      config: Config, now: datetime, summary: CycleSummary) -> list[NewDelivery]:
        """One transaction: the jobs' new carts, recoveries, deliveries, cursors and health
        (and the failures'), and the release of `agents`' claims."""

        def build(new: dict[Any, set[str]], recovered: dict[Any, set[str]],
                  held: dict[Any, dict[str, set[str]]]) -> list[NewDelivery]:
            out: list[NewDelivery] = []
            nothing: set[str] = set()
            for job in done:
                iid = job.integration.id
                got, back_ids = new.get(iid, nothing), recovered.get(iid, nothing)
                fresh = [c for c in job.keep if c.cart_id in got]
                back = [c for c in job.completed if c.cart_id in back_ids]
                self._count(summary, job, fresh, back)
                out += build_deliveries(job, config, now, payload.DETECTED, fresh)
                out += build_deliveries(job, config, now, payload.RECOVERED, back)
                for detected_id, waiting in held.get(iid, {}).items():
                    out += build_deliveries(job, config, now, payload.RECOVERED,
                                            [c for c in job.completed if c.cart_id in waiting],
                                            hold_for=detected_id)
            return out

        keys = await self.store.subjects.keys()
        email, customer = keys.email, keys.customer
        return await self.store.outbox.record(
            now=now,
            detected=[(j.integration.id, c.cart_id, email(c.customer.email),
                       customer(c.customer.id)) for j in done for c in j.keep],
            completed=[(j.integration.id, c.cart_id) for j in done for c in j.completed],
            build=build,
            sources=[SourcePoll(j.integration.id, j.agent.id, j.integration.platform,
                                j.integration.mode, self._next_cursor(j), j.resume)
                     for j in done] + [f for f in failures if f.integration_id is not None],
            agents=agents,
            instance=self.instance_id,
        )

    @staticmethod
    def _next_cursor(job: Job) -> datetime | None:
        """As far as the store was read, less what was not yet idle long enough when it was
        read (it must be read again); a read that got no further keeps the cursor."""
        if job.through is None or job.read_at is None:
            return job.state.cursor
        return min(job.through, job.read_at - job.rules.abandoned_after)

    @staticmethod
    def _failed(summary: CycleSummary, failure: SourcePoll,
                exc: Exception | None = None) -> None:
        """Count and log a failed integration; an unexpected exception (not an
        IntegrationError) is logged at error level with its traceback."""
        unexpected = exc is not None and not isinstance(exc, IntegrationError)
        summary.integration_errors += 1
        summary.polls[(failure.platform, "error")] += 1
        log.log(logging.ERROR if unexpected else logging.WARNING, "integration_failed",
                agent_id=str(failure.agent_id), platform=failure.platform,
                integration_id=str(failure.integration_id), error=failure.error,
                exc_info=exc if unexpected else False)

    @staticmethod
    def _count(summary: CycleSummary, job: Job, fresh: list[Cart], back: list[Cart]) -> None:
        platform = job.integration.platform
        summary.carts_new += len(fresh)
        summary.carts_recovered += len(back)
        summary.new_by_platform[platform] += len(fresh)
        summary.recovered_by_platform[platform] += len(back)
        for cart in fresh:
            value = cart.total_value
            summary.recovery_value[cart.currency] = (
                summary.recovery_value.get(cart.currency, Decimal(0)) + value
            )
            key = (platform, cart.currency)
            summary.value_by[key] = summary.value_by.get(key, Decimal(0)) + value

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
