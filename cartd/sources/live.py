"""Live connectors: each platform's real API, paginated, through the shared HTTP client."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cartd.config import Config
from cartd.sources.custom import normalise
from cartd.sources.errors import IntegrationError
from cartd.sources.http import MAX_REQUESTS, Budget, check_url, request
from cartd.sources.read import Batch, Read, next_page, option
from cartd.sources.shopify_admin import Admin
from cartd.sources.shopify_live import read_graphql, read_rest
from cartd.sources.woocommerce_live import read_woocommerce


async def fetch_live(platform: str, settings: dict[str, Any], config: Config, since: datetime,
                     *, incremental: bool, now: datetime, budget: Budget,
                     resume: Any = None) -> Read:
    """The carts of a live store changed after `since` (or from where `resume` says a
    stopped read goes on), read within `budget`.

    `incremental` polls (the store was read before) also ask for placed orders, so
    that carts delivered as abandoned are seen completing.
    """
    if platform == "shopify":
        api = option(settings, "api", config.platforms.shopify.api)
        if api not in ("graphql", "rest"):
            raise IntegrationError("config.api must be graphql or rest")
        reader = read_graphql if api == "graphql" else read_rest
        return await reader(Admin(settings, config), since, resume, now, budget)
    if platform == "woocommerce":
        return await read_woocommerce(settings, config, since, incremental, now, budget)
    return await _custom(settings, now, budget)


# --- custom -----------------------------------------------------------------


def _custom_headers(settings: dict[str, Any]) -> dict[str, str]:
    headers = settings.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise IntegrationError("config.headers must map header names to strings")
    return headers


async def _custom(settings: dict[str, Any], now: datetime, budget: Budget) -> Read:
    """Every page of the endpoint's carts (it has no cursor: a read is whole or fails, and
    fails when it passes what `budget` allows a read with no progress)."""
    url = check_url(option(settings, "url"))
    headers = _custom_headers(settings)
    secrets = _header_secrets(tuple(headers.values()))
    batch = Batch(normalise)
    seen = {url}
    for _ in range(MAX_REQUESTS):
        reply = await request("GET", url, secrets=secrets, headers=headers, budget=budget)
        body = reply.body if isinstance(reply.body, dict) else {}
        batch.add(body.get("carts"), "carts")
        following = body.get("next")
        if following is None:
            return Read(batch.carts, batch.malformed, now, now)
        url = next_page(following, url)
        if url in seen:
            raise IntegrationError("malformed response: next is a page already read")
        seen.add(url)
    raise IntegrationError(f"more than {MAX_REQUESTS} pages of carts")


def _header_secrets(values: tuple[str, ...]) -> tuple[str, ...]:
    """Header values and their parts (`Bearer <token>`: the token too)."""
    return values + tuple(part for value in values for part in value.split() if len(part) >= 8)
