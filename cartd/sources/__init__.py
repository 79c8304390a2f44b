"""Fetching carts from an integration: mock stores now, live connectors per platform."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from cartd.config import Config
from cartd.sources.http import close
from cartd.sources.live import fetch_live
from cartd.sources.mock import mock_carts
from cartd.sources.model import Cart, IntegrationError

__all__ = ["PLATFORMS", "Fetched", "Integration", "IntegrationError", "close", "fetch"]

PLATFORMS = ("shopify", "woocommerce", "custom")
FIRST_POLL_HISTORY = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Integration:
    id: UUID
    platform: str
    mode: str
    config: dict[str, Any]

    @classmethod
    def from_row(cls, row: dict[str, Any], config: Config) -> Integration:
        platform = row.get("platform")
        raw = row.get("config")
        if platform not in PLATFORMS:
            raise IntegrationError(f"unknown platform {str(platform)[:40]!r}")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise IntegrationError("config must be a JSON object")
        mode = raw.get("mode", config.platforms.default_mode)
        if mode not in ("mock", "live"):
            raise IntegrationError(f"config.mode must be mock or live, not {str(mode)[:40]!r}")
        try:
            ident = row["id"] if isinstance(row["id"], UUID) else UUID(str(row["id"]))
        except ValueError:
            raise IntegrationError("id is not a UUID") from None
        return cls(ident, platform, mode, raw)


@dataclass(frozen=True, slots=True)
class Fetched:
    carts: list[Cart]  # one per cart id
    malformed: Counter[str]  # records skipped, by reason
    mock_epoch: datetime | None


async def fetch(
    integration: Integration, *, config: Config, since: datetime | None,
    mock_epoch: datetime | None, now: datetime,
) -> Fetched:
    """The integration's carts updated after `since`.

    With no `since` (the first poll), a mock store returns everything it holds and a live
    store what changed within `carts.max_age`: older carts are never abandoned ones.
    """
    if integration.mode == "mock":
        epoch = mock_epoch or now - FIRST_POLL_HISTORY
        carts, malformed = mock_carts(
            integration.platform, str(integration.id), epoch, since, now, config.platforms.mock
        )
        return Fetched(carts, malformed, epoch)
    start = since or now - timedelta(seconds=config.carts.max_age)
    carts, malformed = await fetch_live(integration.platform, integration.config, config, start,
                                        incremental=since is not None)
    return Fetched(carts, malformed, None)
