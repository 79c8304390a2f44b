"""What an attempt's answer means (README "Delivery guarantees"): the delivery's next
status and retry time (`decide`), and for its destination's circuit breaker."""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from cartd.config import Config

RETRYABLE = {408, 425, 429}


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the receiver did with one attempt, before it becomes an Outcome (`sent`:
    False for one refused before any request, which is no webhook attempt)."""

    result: str  # 2xx, 3xx, 4xx, 5xx, timeout, error
    http_status: int | None
    error: str | None
    retry_after: float | None = None
    seconds: float = 0.0
    sent: bool = True


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


@functools.lru_cache(maxsize=1024)
def destination(url: str) -> str:
    """`scheme://host:port` of a URL: what breakers and fair shares are kept for (never
    the URL itself, which may hold a token)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed [ of an IPv6 address: the attempt fails
        return "invalid://"
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    except ValueError:  # a port out of range: the attempt fails as a connection error
        port = 0
    return f"{parts.scheme}://{parts.hostname}:{port}"


def hostname(url: str) -> str | None:
    """The host of a URL, None when it has none (or cannot be read)."""
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def failed(attempt: Attempt) -> bool:
    """Whether an attempt counts against its destination's breaker: anything but a 2xx or
    a 4xx that rejects the payload (the receiver is up and answering)."""
    if attempt.result == "4xx":
        return attempt.http_status in RETRYABLE
    return attempt.result != "2xx"


class Breakers:
    """Circuit breakers per destination (README "Running several instances"), in this
    instance's memory: each instance judges a destination by its own attempts, so a dead
    instance leaves no open breaker behind and no attempt waits on a database write. With
    N instances an open destination gets up to N probes per `webhook.breaker_probe`."""

    def __init__(self) -> None:
        self._failures: Counter[str] = Counter()  # consecutive failed attempts
        self._probe_at: dict[str, datetime] = {}  # open breakers: when the next probe may go
        self._probing: set[str] = set()

    def open_count(self) -> int:
        return len(self._probe_at)

    def is_open(self, dest: str) -> bool:
        return dest in self._probe_at

    def failing(self, dest: str) -> bool:
        return self._failures[dest] > 0

    def blocked(self, dest: str, now: datetime) -> bool:
        """Open, with its probe in flight or not yet due."""
        return dest in self._probing or (dest in self._probe_at and now < self._probe_at[dest])

    def admit(self, dest: str) -> None:
        """An attempt to `dest` starts: while open, it is the probe."""
        if dest in self._probe_at:
            self._probing.add(dest)

    def unsent(self, dest: str) -> None:
        """An attempt admitted to `dest` was not sent: it counts neither way, and a probe
        it was may go again."""
        self._probing.discard(dest)

    def record(self, dest: str, failure: bool, now: datetime, config: Config) -> str | None:
        """Count an attempt's result; returns "opened" or "closed" when the breaker turns."""
        self._probing.discard(dest)
        if not failure:
            self._failures.pop(dest, None)
            return "closed" if self._probe_at.pop(dest, None) is not None else None
        self._failures[dest] += 1
        if dest in self._probe_at or self._failures[dest] >= config.webhook.breaker_failures:
            opened = dest not in self._probe_at
            self._probe_at[dest] = now + timedelta(seconds=config.webhook.breaker_probe)
            return "opened" if opened else None
        return None
