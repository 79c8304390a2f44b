"""The custom platform's cart (the payload's shape), and the field checks the other
normalisers share: a value cartd cannot send exactly and safely is a MalformedRecord."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cartd.sources.model import (
    CURRENCIES,
    MAX_ID,
    MAX_LINES,
    MAX_QUANTITY,
    MAX_TEXT,
    MAX_URL,
    Cart,
    Customer,
    Item,
    MalformedRecord,
    clean,
    money,
    timestamp,
)

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


def _item(value: Any, code: str) -> Item:
    line = mapping(value, "item")
    return Item(  # positional: twice as fast as keywords
        identifier(line.get("product_id"), "product_id"),  # product_id
        identifier(line.get("variant_id"), "variant_id"),  # variant_id
        text(line.get("sku"), "sku"),  # sku
        title(line.get("title")),  # title
        quantity(line.get("quantity")),  # quantity
        money(line.get("unit_price"), "unit_price", code),  # unit_price
    )


def _customer(value: Any) -> Customer:
    raw = {} if value is None else mapping(value, "customer")
    return Customer(  # positional: twice as fast as keywords
        identifier(raw.get("id"), "customer id"),  # id
        text(raw.get("email"), "email"),  # email
        text(raw.get("first_name"), "first_name"),  # first_name
        text(raw.get("last_name"), "last_name"),  # last_name
        text(raw.get("phone"), "phone"),  # phone
        flag(raw.get("accepts_marketing")),  # accepts_marketing
    )


def normalise(cart: Any) -> Cart:
    """A Cart from the custom platform's cart object; MalformedRecord when it is not one."""
    raw = mapping(cart, "cart")
    cart_id = required_id(raw.get("cart_id"), "cart_id")
    code = currency(raw.get("currency"))
    items = tuple([_item(line, code) for line in line_items(raw.get("items"))])
    total = raw.get("total_value")
    created_at = timestamp(raw.get("created_at"), "created_at")
    last = raw.get("updated_at") or raw.get("abandoned_at")
    return Cart(
        cart_id=cart_id,
        customer=_customer(raw.get("customer")),
        items=items,
        currency=code,
        created_at=created_at,
        last_activity=created_at if last is None else timestamp(last, "abandoned_at"),
        recovery_url=url(raw.get("recovery_url"), "recovery_url"),
        stated_total=None if total is None else money(total, "total_value", code),
        completed_at=optional_time(raw.get("completed_at"), "completed_at"),
        order_id=identifier(raw.get("order_id"), "order_id"),
    )
