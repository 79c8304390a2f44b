"""The custom platform's cart (SPEC §2 shape), and field checks the other normalisers share."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cartd.sources.model import Cart, Customer, Item, MalformedRecord, money, timestamp

_TRUE = frozenset({"1", "true", "yes", "on", "y"})


def mapping(value: Any, what: str) -> dict[str, Any]:
    """`value` itself when it is a JSON object."""
    if not isinstance(value, dict):
        raise MalformedRecord(f"{what} is not an object")
    return value


def identifier(value: Any) -> str | None:
    """An id as a string (platforms send numbers or strings); None when absent or empty."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def required_id(value: Any, what: str) -> str:
    ident = identifier(value)
    if ident is None:
        raise MalformedRecord(f"{what} is missing")
    return ident


def text(value: Any) -> str | None:
    """A non-empty stripped string, else None (platforms send "" for unknown fields)."""
    return (value.strip() or None) if isinstance(value, str) else None


def title(value: Any) -> str:
    name = text(value)
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
    if not (isinstance(value, str) and len(value) == 3 and value.isascii() and value.isalpha()):
        raise MalformedRecord(f"currency must be a 3-letter code: {value!r}")
    return value.upper()


def quantity(value: Any) -> int:
    """A whole number of units, at least 1."""
    if type(value) is int and value > 0:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise MalformedRecord(f"quantity must be a whole number > 0: {value!r}")
    return value


def line_items(value: Any) -> list[Any]:
    """The non-empty list of a cart's lines."""
    if value is None or value == []:
        raise MalformedRecord("cart has no items")
    if not isinstance(value, list):
        raise MalformedRecord("items is not a list")
    return value


def optional_time(value: Any, what: str) -> datetime | None:
    return None if value is None else timestamp(value, what)


def _item(value: Any) -> Item:
    line = mapping(value, "item")
    return Item(  # positional: twice as fast as keywords
        identifier(line.get("product_id")),  # product_id
        identifier(line.get("variant_id")),  # variant_id
        text(line.get("sku")),  # sku
        title(line.get("title")),  # title
        quantity(line.get("quantity")),  # quantity
        money(line.get("unit_price"), "unit_price"),  # unit_price
    )


def _customer(value: Any) -> Customer:
    raw = {} if value is None else mapping(value, "customer")
    return Customer(  # positional: twice as fast as keywords
        identifier(raw.get("id")),  # id
        text(raw.get("email")),  # email
        text(raw.get("first_name")),  # first_name
        text(raw.get("last_name")),  # last_name
        text(raw.get("phone")),  # phone
        flag(raw.get("accepts_marketing")),  # accepts_marketing
    )


def normalise(cart: Any) -> Cart:
    """A Cart from the custom platform's cart object; MalformedRecord when it is not one."""
    raw = mapping(cart, "cart")
    cart_id = required_id(raw.get("cart_id"), "cart_id")
    items = tuple(map(_item, line_items(raw.get("items"))))
    total = raw.get("total_value")
    created_at = timestamp(raw.get("created_at"), "created_at")
    last = raw.get("updated_at") or raw.get("abandoned_at")
    return Cart(
        cart_id=cart_id,
        customer=_customer(raw.get("customer")),
        items=items,
        currency=currency(raw.get("currency")),
        created_at=created_at,
        last_activity=created_at if last is None else timestamp(last, "abandoned_at"),
        recovery_url=text(raw.get("recovery_url")),
        stated_total=None if total is None else money(total, "total_value"),
        completed_at=optional_time(raw.get("completed_at"), "completed_at"),
        order_id=identifier(raw.get("order_id")),
    )
