"""Reading a WooCommerce store's orders (`wp-json/wc/v3/orders`), oldest change first.

Orders are asked for by modification time, ascending (`orderby=modified&order=asc`), from
a bound that moves with what was read (keyset paging): an order that changes during the
read moves to the end and is read again there (its latest version is kept), and none is
skipped because the pages shifted. WooCommerce dates have whole seconds, so the bound
stays one second behind the newest change read (the orders of that second are read again
and known); only a second with more than a page of orders is paged by number.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any

import aiohttp

from cartd.config import Config
from cartd.model import MalformedRecord, iso, timestamp
from cartd.sources.errors import IntegrationError
from cartd.sources.http import Budget, OutOfBudget, request
from cartd.sources.read import Batch, Read, base_url, option, status_list
from cartd.sources.woocommerce import PLACED_STATUSES, normalise

PAGE_SIZE = 100  # WooCommerce's largest per_page
_SECOND = timedelta(seconds=1)


def _consent_key(settings: dict[str, Any]) -> str | None:
    key = settings.get("consent_meta_key")
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip():
        raise IntegrationError("config.consent_meta_key must be a non-empty string")
    return key


def _credentials(settings: dict[str, Any]) -> tuple[dict[str, str], dict[str, str], tuple[str, str]]:
    """(headers, query parameters, secrets) that sign the requests in, by `config.auth`:
    HTTP Basic, or the key and secret as query parameters for hosts that strip the
    `Authorization` header (over https, as every request: `base_url` passed that rule)."""
    key, secret = option(settings, "consumer_key"), option(settings, "consumer_secret")
    auth = settings.get("auth", "header")
    if auth == "header":
        return {"Authorization": aiohttp.encode_basic_auth(key, secret)}, {}, (key, secret)
    if auth != "query":
        raise IntegrationError("config.auth must be header or query")
    return {}, {"consumer_key": key, "consumer_secret": secret}, (key, secret)


def _wanted(settings: dict[str, Any], config: Config, incremental: bool
            ) -> tuple[str, frozenset[str]]:
    """The `status` parameter, and the statuses that mean the order was placed."""
    wanted = status_list(settings, "statuses", config.platforms.woocommerce.statuses)
    placed = status_list(settings, "placed_statuses", PLACED_STATUSES)
    if incremental:  # the store was read before: see delivered carts become orders
        wanted += [s for s in placed if s not in wanted]
    return ",".join(wanted), frozenset(placed)


def _newest_change(orders: list[Any]) -> datetime | None:
    """The latest `date_modified_gmt` of a page's orders."""
    newest = None
    for order in orders:
        value = order.get("date_modified_gmt") if isinstance(order, dict) else None
        try:
            moment = timestamp(value, "date_modified_gmt")
        except MalformedRecord:
            continue
        newest = moment if newest is None or moment > newest else newest
    return newest


async def read_woocommerce(settings: dict[str, Any], config: Config, since: datetime,
                           incremental: bool, now: datetime, budget: Budget) -> Read:
    base = base_url(settings)
    headers, auth_params, secrets = _credentials(settings)
    statuses, placed = _wanted(settings, config, incremental)
    batch = Batch(partial(normalise, placed=placed,
                          consent_key=_consent_key(settings)))
    # WooCommerce reads dates in the site's time zone unless told they are GMT.
    params = {"status": statuses, "per_page": str(PAGE_SIZE), "orderby": "modified",
              "order": "asc", "dates_are_gmt": "true", **auth_params}
    start = since.replace(microsecond=0)
    bound, page = start, 1
    try:
        while True:
            reply = await request(
                "GET", f"{base}/wp-json/wc/v3/orders", secrets=secrets, headers=headers,
                params=params | {"modified_after": iso(bound).removesuffix("Z"),
                                 "page": str(page)}, budget=budget)
            batch.add(reply.body, "orders")
            budget.progressed = True
            pages = reply.headers.get("X-WP-TotalPages", "1").strip()
            if not pages.isdigit():
                raise IntegrationError("malformed response: X-WP-TotalPages is not a number")
            if page >= int(pages):
                return Read(batch.carts, batch.malformed, now, now)
            newest = _newest_change(reply.body)
            if newest is not None and newest - _SECOND > bound:
                bound, page = newest.replace(microsecond=0) - _SECOND, 1
            else:
                page += 1
    except OutOfBudget as stopped:
        through = bound if bound > start else None
        return Read(batch.carts, batch.malformed, through, now, None, str(stopped))
