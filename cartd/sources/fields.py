"""The field checks every normaliser shares, and gathering a fetch's records into carts:
a value cartd cannot send exactly and safely is a MalformedRecord (README "Reliability")."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import structlog

from cartd.model import (
    CURRENCIES,
    MAX_ID,
    MAX_LINES,
    MAX_QUANTITY,
    MAX_TEXT,
    MAX_URL,
    Cart,
    MalformedRecord,
    clean,
    timestamp,
)

log = structlog.get_logger("cartd.sources")

_TRUE = frozenset({"1", "true", "yes", "on", "y"})
_ID_RANGE = 2**64  # integer ids are 64-bit, as every platform's are
_SCHEMES = ("https://", "http://")


def mapping(value: Any, what: str) -> dict[str, Any]:
    """`value` itself when it is a JSON object."""
    if not isinstance(value, dict):
        raise MalformedRecord(f"{what} is not an object")
    return value


def identifier(value: Any, what: str) -> str | None:
    """An id as a string (platforms send numbers or strings); None when absent or empty."""
    if type(value) is str:
        ident = value.strip()
        if len(ident) <= MAX_ID and ident.isascii() and "\x00" not in ident:
            return ident or None  # the common case, without a call
        return clean(ident, what, MAX_ID) or None
    if type(value) is int and -_ID_RANGE < value < _ID_RANGE:
        return str(value)
    if value is None:
        return None
    raise MalformedRecord(f"{what} is not a string or a 64-bit integer")


def required_id(value: Any, what: str) -> str:
    ident = identifier(value, what)
    if ident is None:
        raise MalformedRecord(f"{what} is missing")
    return ident


def text(value: Any, what: str, limit: int = MAX_TEXT) -> str | None:
    """A non-empty stripped string, else None (platforms send "" for unknown fields)."""
    if type(value) is str:
        value = value.strip()
        if len(value) <= limit and value.isascii() and "\x00" not in value:
            return value or None  # the common case, without a call
        return clean(value, what, limit) or None
    if value is None:
        return None
    raise MalformedRecord(f"{what} is not a string")


def url(value: Any, what: str) -> str | None:
    """An absolute http(s) URL, or None when absent."""
    link = text(value, what, MAX_URL)
    if link is None or link.startswith(_SCHEMES) or link[:8].lower().startswith(_SCHEMES):
        return link
    raise MalformedRecord(f"{what} is not an http(s) URL")


def title(value: Any) -> str:
    name = text(value, "item title")
    if name is None:
        raise MalformedRecord("item title is missing")
    return name


def flag(value: Any) -> bool:
    """True for true, 1 and the strings 1, true, yes, y, on (any case); else False."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in _TRUE


def currency(value: Any) -> str:
    """An ISO 4217 code, upper-cased."""
    if type(value) is str:
        if value in CURRENCIES:
            return value
        if len(value) == 3 and value.upper() in CURRENCIES:
            return value.upper()
    raise MalformedRecord("currency is not an ISO 4217 code")


def quantity(value: Any) -> int:
    """A whole number of units, from 1 to MAX_QUANTITY."""
    count = 0
    if type(value) is int:
        count = value
    elif isinstance(value, float) and value.is_integer():
        count = int(value)
    elif isinstance(value, str):
        digits = value.strip()
        if digits.isascii() and digits.isdigit():
            count = int(digits) if len(digits) < 20 else MAX_QUANTITY + 1
    if not 0 < count <= MAX_QUANTITY:
        raise MalformedRecord(f"quantity must be a whole number from 1 to {MAX_QUANTITY}")
    return count


def line_items(value: Any) -> list[Any]:
    """The non-empty list of a cart's lines, at most MAX_LINES of them."""
    if value is None or value == []:
        raise MalformedRecord("cart has no items")
    if not isinstance(value, list):
        raise MalformedRecord("items is not a list")
    if len(value) > MAX_LINES:
        raise MalformedRecord(f"cart has more than {MAX_LINES} lines")
    return value


def optional_time(value: Any, what: str) -> datetime | None:
    return None if value is None else timestamp(value, what)



class Gathered:
    """The carts of one fetch, one per cart id (its latest version, `Cart.newer_than`),
    whatever pages or repeats the store sent them in; records that are not carts are
    counted by reason. Every platform and mode gathers its records here."""

    __slots__ = ("by_id", "malformed")

    def __init__(self) -> None:
        self.by_id: dict[str, Cart] = {}
        self.malformed: Counter[str] = Counter()

    def gather(self, records: Iterable[Any], normalise: Callable[[Any], Cart]) -> None:
        by_id = self.by_id
        for record in records:
            try:
                cart = normalise(record)
            except MalformedRecord as exc:
                self.malformed[str(exc)] += 1
                continue
            except Exception as exc:  # a normaliser's bug costs this record, not its store
                reason = f"unexpected {type(exc).__name__}"
                if not self.malformed[reason]:
                    log.error("record_failed", reason=reason, exc_info=True)
                self.malformed[reason] += 1
                continue
            held = by_id.get(cart.cart_id)
            if held is None or cart.newer_than(held):
                by_id[cart.cart_id] = cart

    @property
    def carts(self) -> list[Cart]:
        return list(self.by_id.values())
