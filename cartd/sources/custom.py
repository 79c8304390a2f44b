"""The custom platform's cart (the payload's shape)."""

from __future__ import annotations

from typing import Any

from cartd.model import Cart, Customer, Item, money, timestamp
from cartd.sources.fields import (
    currency,
    flag,
    identifier,
    line_items,
    mapping,
    optional_time,
    quantity,
    required_id,
    text,
    title,
    url,
)


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
