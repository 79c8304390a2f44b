"""The webhook body (README "The payload"): built from carts with Decimal money, serialised
once; rebuilt without some carts, or with their customers redacted."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from cartd.model import Cart, minor_units, quantize

DETECTED = "abandoned_cart.detected"
RECOVERED = "abandoned_cart.recovered"


def new_webhook_id() -> str:
    """`msg_` and 128 random bits in hex (5x faster than a uuid4 and as unique)."""
    return "msg_" + secrets.token_hex(16)


# Money is written as a JSON number that a receiver reading it as a 64-bit float gets
# exactly: a decimal of at most 15 significant digits (DBL_DIG) converts to the nearest
# double and back to the same digits, and the shortest representation of that double
# (what orjson writes, as Python's repr does) is therefore that decimal itself. Carts
# keep their amounts below 10**11 / 10**minor-digits (`model.CART_DIGITS`), so even a
# payload's total of 10,000 carts stays within 15 digits; whole amounts (JPY) are ints.
EXACT_DIGITS = 15
_SMALLEST = -307  # the exponent of the smallest normal double, near 2.2e-308


def _number(value: Any) -> Any:
    """A Decimal as the JSON number of the same value: an int when it is whole by its
    exponent, else a float; ValueError when a float would not hold it exactly."""
    if isinstance(value, Decimal):
        if value and not (value.is_finite() and len(value.as_tuple().digits) <= EXACT_DIGITS
                          and _SMALLEST <= value.adjusted() < EXACT_DIGITS):
            raise ValueError(f"{value} cannot be written exactly as a JSON number")
        return int(value) if value.as_tuple().exponent >= 0 else float(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


_TIMES = orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS


def dumps(body: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as `json.dumps(separators=(",", ":"), ensure_ascii=False)` writes
    it (orjson: ~10x faster on bodies); a UTC datetime is written as `iso()` writes it."""
    return orjson.dumps(body, default=_number, option=_TIMES)


def money_number(currency: str) -> Callable[[Decimal], int | float]:
    """How an amount of a cart in `currency` is written (as `_number` would, without its
    check: a cart's amounts are bounded): a whole number where the currency has no minor
    unit, else the float of the same digits."""
    return int if minor_units(currency) == 0 else float


def cart_entry(cart: Cart, event: str, recovered_at: datetime | None,
               number: Callable[[Decimal], Any]) -> dict[str, Any]:
    entry = cart.to_payload(number)
    if event == RECOVERED:
        entry["recovered_at"] = (
            cart.completed_at or recovered_at or cart.last_activity).astimezone(UTC)
        if cart.order_id:
            entry["order_id"] = cart.order_id
    return entry


def build(
    *,
    event: str,
    now: datetime,
    agent: dict[str, Any],
    company: dict[str, Any],
    integration: dict[str, Any],
    carts: list[Cart],
) -> bytes:
    """One webhook body for carts of a single currency."""
    currency = carts[0].currency
    number = money_number(currency)
    return dumps(
        {
            "type": event,
            "timestamp": now.astimezone(UTC),
            "agent_info": agent,
            "company": company,
            "integration": integration,
            "abandoned_carts": [cart_entry(c, event, now, number) for c in carts],
            "recovery_analytics": analytics(
                [c.total_value for c in carts], sum(c.item_count for c in carts),
                integration["platform"], currency),
        }
    )


def analytics(totals: list[Decimal], items: int, platform: str, currency: str) -> dict[str, Any]:
    """`recovery_analytics` of carts worth `totals` (exact, in the currency) with `items`
    units in all."""
    number = money_number(currency)
    total = sum(totals, Decimal(0))
    return {
        "total_carts": len(totals),
        "total_value": number(total),
        "platform": platform,
        "currency": currency,
        "total_items": items,
        "average_cart_value": number(quantize(total / len(totals), currency)),
    }


# What a redacted cart keeps of its customer: nothing that names or reaches them.
ERASED_CUSTOMER = {"id": None, "email": None, "first_name": None, "last_name": None,
                   "phone": None, "accepts_marketing": False}


def _parse(body: bytes) -> dict[str, Any]:
    """A stored body with its money as Decimal (it was written from quantized Decimals,
    so the digits come back exactly)."""
    return json.loads(body, parse_float=Decimal)


def without_carts(body: bytes, cart_ids: set[str]) -> bytes | None:
    """The body with the carts `cart_ids` taken out and `recovery_analytics` recomputed;
    None when no cart is left. Everything else (type, timestamp, order) stays."""
    data = _parse(body)
    carts = [c for c in data["abandoned_carts"] if c["cart_id"] not in cart_ids]
    if not carts:
        return None
    data["abandoned_carts"] = carts
    old = data["recovery_analytics"]
    data["recovery_analytics"] = analytics(
        [Decimal(c["total_value"]) for c in carts],
        sum(item["quantity"] for c in carts for item in c["items"]),
        old["platform"], old["currency"])
    return dumps(data)


def redacted(body: bytes, cart_ids: set[str]) -> bytes | None:
    """The body with the customer and recovery link of the carts `cart_ids` erased (the
    cart, its items and the totals stay); None when there was nothing left to erase."""
    data = _parse(body)
    changed = False
    for cart in data["abandoned_carts"]:
        if cart["cart_id"] in cart_ids and not cart.get("erased"):
            cart.update(customer=dict(ERASED_CUSTOMER), recovery_url=None, erased=True)
            changed = True
    return dumps(data) if changed else None
