"""Fetching carts from an integration: mock stores now, live connectors per platform."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from cartd.config import Config
from cartd.sources import http, shopify_admin
from cartd.sources.errors import IntegrationError
from cartd.sources.http import Budget
from cartd.sources.live import fetch_live
from cartd.sources.mock import mock_carts
from cartd.sources.mock_stores import FIRST_POLL_HISTORY
from cartd.sources.read import Read

__all__ = ["PLATFORMS", "Budget", "Integration", "IntegrationError", "Read", "close", "fetch"]

PLATFORMS = ("shopify", "woocommerce", "custom")
READ_SHARE = 0.5  # of the polling interval, the time one live read may take per cycle


async def close() -> None:
    """Close the shared HTTP session and forget the tokens and rate-limit readings kept
    in memory (at daemon shutdown); the next fetch starts afresh."""
    shopify_admin.forget_all()
    await http.close()


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


async def fetch(
    integration: Integration, *, config: Config, since: datetime | None,
    opened_at: datetime | None, now: datetime, resume: Any = None,
    budget: Budget | None = None,
) -> Read:
    """The integration's carts updated after `since`, read within `budget` (by default
    READ_SHARE of the polling interval and MAX_REQUESTS requests).

    With no `since` (the first poll), a mock store returns everything it holds since it
    `opened_at` (None: FIRST_POLL_HISTORY ago) and a live store what changed within
    `carts.max_age`: older carts are never abandoned ones.
    """
    if integration.mode == "mock":
        carts, malformed = mock_carts(
            integration.platform, str(integration.id), opened_at or now - FIRST_POLL_HISTORY,
            since, now, config.platforms.mock)
        return Read(carts, malformed, now, now)
    start = since or now - timedelta(seconds=config.carts.max_age)
    return await fetch_live(
        integration.platform, integration.config, config, start, incremental=since is not None,
        now=now, resume=resume,
        budget=budget or Budget(config.polling.interval * READ_SHARE))
