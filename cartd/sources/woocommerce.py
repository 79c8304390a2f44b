"""WooCommerce orders (`wc/v3/orders`): pending, failed and draft orders are the abandoned carts."""

from __future__ import annotations

import html
from datetime import datetime
from decimal import Decimal
from typing import Any

from cartd.model import Cart, Customer, Item, amount, money, quantize, timestamp
from cartd.sources.fields import (
    currency,
    flag,
    identifier,
    line_items,
    mapping,
    quantity,
    required_id,
    text,
    title,
    url,
)

# Statuses of an order that was placed (paid, or awaiting a bank transfer, cheque or cash
# on delivery as `on-hold`): its cart is recovered, not abandoned. `placed_statuses`.
PLACED_STATUSES = ("processing", "completed", "on-hold")


def _unit_price(line: dict[str, Any], count: int, code: str) -> Decimal:
    """`subtotal / quantity` when that division is exact, else the line's float `price` via
    str; rounded once to the minor unit of `code`."""
    subtotal = line.get("subtotal")
    if subtotal is not None:
        whole = amount(subtotal, "line subtotal")
        unit = whole / count
        if unit * count == whole or line.get("price") is None:
            return quantize(unit, code)
    return money(line.get("price"), "line price", code)


def _item(value: Any, code: str) -> Item:
    line = mapping(value, "line item")
    count = quantity(line.get("quantity"))
    return Item(  # positional: twice as fast as keywords
        _ref(line.get("product_id"), "product_id"),  # product_id
        _ref(line.get("variation_id"), "variation_id"),  # variant_id
        text(line.get("sku"), "sku"),  # sku
        title(_unescape(line.get("name"))),  # title
        count,  # quantity
        _unit_price(line, count, code),  # unit_price
    )


def _ref(value: Any, what: str) -> str | None:
    """An id, where WooCommerce's 0 means none (guest customer, simple product)."""
    ident = identifier(value, what)
    return None if ident == "0" else ident


def _unescape(value: Any) -> Any:
    """WooCommerce sends names HTML-escaped (`Hoodie &ndash; Blue`)."""
    return html.unescape(value) if isinstance(value, str) and "&" in value else value


def _accepts_marketing(meta: Any, consent_key: str | None) -> bool:
    """The truthy value of the order meta `consent_key`; no key, no consent."""
    if consent_key is None or not isinstance(meta, list):
        return False
    for entry in meta:
        if isinstance(entry, dict) and entry.get("key") == consent_key:
            return flag(entry.get("value"))
    return False


def _customer(order: dict[str, Any], consent_key: str | None) -> Customer:
    billing = order.get("billing")
    raw = {} if billing is None else mapping(billing, "billing")
    return Customer(  # positional: twice as fast as keywords
        _ref(order.get("customer_id"), "customer_id"),  # id
        text(raw.get("email"), "billing email"),  # email
        text(_unescape(raw.get("first_name")), "billing first_name"),  # first_name
        text(_unescape(raw.get("last_name")), "billing last_name"),  # last_name
        text(raw.get("phone"), "billing phone"),  # phone
        _accepts_marketing(order.get("meta_data"), consent_key),  # accepts_marketing
    )


def _completed_at(order: dict[str, Any], modified: datetime) -> datetime:
    """When the order was paid or completed; its last change when WooCommerce does not say."""
    placed = order.get("date_paid_gmt") or order.get("date_completed_gmt")
    return modified if placed is None else timestamp(placed, "date_paid_gmt")


def normalise(order: Any, placed: frozenset[str] | tuple[str, ...] = PLACED_STATUSES,
              consent_key: str | None = None) -> Cart:
    """A Cart from one `wc/v3/orders` element; an order whose status is in `placed`
    carries its completion. Consent is the order meta `consent_key`, if any."""
    raw = mapping(order, "order")
    cart_id = required_id(raw.get("id"), "order id")
    created_at = timestamp(raw.get("date_created_gmt"), "date_created_gmt")
    modified = raw.get("date_modified_gmt")
    last_activity = created_at if modified is None else timestamp(modified, "date_modified_gmt")
    status = raw.get("status")
    completed = isinstance(status, str) and status in placed
    total = raw.get("total")
    code = currency(raw.get("currency"))
    return Cart(
        cart_id=cart_id,
        customer=_customer(raw, consent_key),
        items=tuple([_item(line, code) for line in line_items(raw.get("line_items"))]),
        currency=code,
        created_at=created_at,
        last_activity=last_activity,
        recovery_url=url(raw.get("payment_url"), "payment_url"),
        stated_total=None if total is None else money(total, "total", code),
        completed_at=_completed_at(raw, last_activity) if completed else None,
        order_id=(identifier(raw.get("number"), "number") or cart_id) if completed else None,
    )
