"""What every test shares: the repository, the agents' template, the webhook secret, a
clock the test moves, waits with a deadline, config built as `cartd` builds it."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cartd.config import Config, build

ROOT = Path(__file__).resolve().parents[2]
SLUG = "ecommerce-abandoned-cart"
# The secret of the Standard Webhooks reference vector (tests/test_signing.py), and the
# webhook secret of every test that does not need one of its own.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CARTD = (sys.executable, "-m", "cartd")  # this checkout's command line
# webhook settings: a retry every second, no jitter, no breaker in the way
FAST_RETRIES = {"retry_schedule": ["1s"] * 20, "retry_jitter": 0, "breaker_failures": 1000}


def new_secret() -> str:
    """A fresh random webhook secret."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Clock:
    """An injectable clock that tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Wait for a condition with a deadline (sync or async predicate)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > end:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def config(**sections: Any) -> Config:
    """A Config from these sections, as `cartd` builds one from its file (no environment)."""
    return build(sections, env={})
