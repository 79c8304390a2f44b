"""What the daemon's services share: one stop signal with one deadline (README "Running
as a systemd service": `shutdown_timeout` bounds the whole stop)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol


class Stopping:
    """Set once: every service stops taking work, and what is in flight may take until
    the deadline, `shutdown_timeout` after the stop began."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._deadline = math.inf  # monotonic
        self._callbacks: list[Callable[[], None]] = []

    def set(self, timeout_seconds: float) -> None:
        if self._event.is_set():
            return
        self._deadline = time.monotonic() + timeout_seconds
        self._event.set()
        for callback in self._callbacks:
            callback()

    def is_set(self) -> bool:
        return self._event.is_set()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the stop begins (at once if it has)."""
        if self._event.is_set():
            callback()
        else:
            self._callbacks.append(callback)

    def remaining(self) -> float:
        """Seconds left until the deadline (infinite before the stop began)."""
        return max(0.0, self._deadline - time.monotonic())

    async def wait(self) -> None:
        await self._event.wait()

    async def sleep(self, seconds: float) -> bool:
        """Wait `seconds`, or less if the stop begins; True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        return self._event.is_set()


class Service(Protocol):
    """One of the daemon's services (docs/architecture.md)."""

    async def run(self, stopping: Stopping) -> None:
        """Work until the stop begins, then finish what is in flight by its deadline."""
        ...


async def cancel(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel the tasks not done yet and wait until they are."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
