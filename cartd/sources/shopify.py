"""Shopify abandoned checkouts (GraphQL `abandonedCheckouts` nodes and REST `checkouts.json`).

Money is the shop's (`shopMoney`, REST `currency`): every cart of a store in one
currency, the one its revenue is reported in (README "Connecting stores").
"""

from __future__ import annotations

from typing import Any

from cartd.model import Cart, Customer, Item, MalformedRecord, money, timestamp
from cartd.sources.fields import (
    currency,
    identifier,
    line_items,
    mapping,
    optional_time,
    quantity,
    text,
    url,
)


def _gid(value: Any, what: str) -> str | None:
    """The plain id of `gid://shopify/Type/123` (REST already sends the plain id)."""
    ident = identifier(value, what)
    if ident is None:
        return None
    return ident.rsplit("/", 1)[-1] or None


def _node_gid(value: Any, what: str) -> str | None:
    """The plain id of a `{id}` reference such as `variant{id}`, or None when it is null."""
    return None if value is None else _gid(mapping(value, what).get("id"), what)


def _cart_id(value: Any) -> str:
    ident = _gid(value, "checkout id")
    if ident is None:
        raise MalformedRecord("checkout id is missing")
    return ident


# What a line whose product title is gone (null) is called, when it has no variant
# title or SKU either.
UNTITLED = "Untitled item"


def _title(name: Any, variant: Any, sku: Any) -> str:
    """`Product - Variant`; a null title falls back to the variant title, then the SKU."""
    product, variant_title = text(name, "item title"), text(variant, "variant title")
    if variant_title == "Default Title":
        variant_title = None
    if product is None:
        return variant_title or text(sku, "sku") or UNTITLED
    return product if variant_title is None else f"{product} - {variant_title}"


def _part(value: Any, what: str) -> dict[str, Any]:
    """An optional nested object: {} when it is null."""
    return {} if value is None else mapping(value, what)


def _graphql_customer(value: Any) -> Customer:
    """From `customer {id firstName lastName defaultEmailAddress {emailAddress
    marketingState} defaultPhoneNumber {phoneNumber}}`; any of it may be null (a guest,
    or protected customer data the app may not read)."""
    raw = _part(value, "customer")
    email = _part(raw.get("defaultEmailAddress"), "defaultEmailAddress")
    phone = _part(raw.get("defaultPhoneNumber"), "defaultPhoneNumber")
    return Customer(  # positional: twice as fast as keywords
        _gid(raw.get("id"), "customer id"),  # id
        text(email.get("emailAddress"), "email"),  # email
        text(raw.get("firstName"), "first name"),  # first_name
        text(raw.get("lastName"), "last name"),  # last_name
        text(phone.get("phoneNumber"), "phone"),  # phone
        email.get("marketingState") == "SUBSCRIBED",  # accepts_marketing
    )


def _rest_customer(value: Any, checkout: dict[str, Any]) -> Customer:
    """The nested customer, with the checkout's own contact and consent: from 2025-01 the
    customer carries no consent, `buyer_accepts_marketing` is the buyer's choice."""
    raw = _part(value, "customer")
    return Customer(  # positional: twice as fast as keywords
        _gid(raw.get("id"), "customer id"),  # id
        text(raw.get("email"), "email") or text(checkout.get("email"), "email"),  # email
        text(raw.get("first_name"), "first name"),  # first_name
        text(raw.get("last_name"), "last name"),  # last_name
        text(raw.get("phone"), "phone") or text(checkout.get("phone"), "phone"),  # phone
        checkout.get("buyer_accepts_marketing") is True,  # accepts_marketing
    )


def _shop_money(value: Any, what: str) -> dict[str, Any]:
    return mapping(mapping(value, what).get("shopMoney"), what)


def _graphql_item(value: Any, cart_currency: str) -> Item:
    line = mapping(value, "line item")
    price = _shop_money(line.get("originalUnitPriceSet"), "line price")
    code = price.get("currencyCode")
    if code is not None and code != cart_currency and currency(code) != cart_currency:
        raise MalformedRecord("line currency differs from the cart currency")
    return Item(  # positional: twice as fast as keywords
        _node_gid(line.get("product"), "product"),  # product_id
        _node_gid(line.get("variant"), "variant"),  # variant_id
        text(line.get("sku"), "sku"),  # sku
        _title(line.get("title"), line.get("variantTitle"), line.get("sku")),  # title
        quantity(line.get("quantity")),  # quantity
        money(price.get("amount"), "line price", cart_currency),  # unit_price
    )


def normalise_graphql(node: Any) -> Cart:
    """A Cart from one GraphQL `abandonedCheckouts` node."""
    raw = mapping(node, "checkout")
    cart_id = _cart_id(raw.get("id"))
    total = _shop_money(raw.get("totalPriceSet"), "totalPriceSet")
    cart_currency = currency(total.get("currencyCode"))
    lines = raw.get("lineItems")
    nodes = None if lines is None else mapping(lines, "lineItems").get("nodes")
    created_at = timestamp(raw.get("createdAt"), "createdAt")
    updated = raw.get("updatedAt")
    return Cart(
        cart_id=cart_id,
        customer=_graphql_customer(raw.get("customer")),
        items=tuple([_graphql_item(line, cart_currency) for line in line_items(nodes)]),
        currency=cart_currency,
        created_at=created_at,
        last_activity=created_at if updated is None else timestamp(updated, "updatedAt"),
        recovery_url=url(raw.get("abandonedCheckoutUrl"), "abandonedCheckoutUrl"),
        stated_total=money(total.get("amount"), "totalPriceSet", cart_currency),
        completed_at=optional_time(raw.get("completedAt"), "completedAt"),
    )


def _rest_item(value: Any, code: str) -> Item:
    line = mapping(value, "line item")
    return Item(  # positional: twice as fast as keywords
        identifier(line.get("product_id"), "product_id"),  # product_id
        identifier(line.get("variant_id"), "variant_id"),  # variant_id
        text(line.get("sku"), "sku"),  # sku
        _title(line.get("title"), line.get("variant_title"), line.get("sku")),  # title
        quantity(line.get("quantity")),  # quantity
        money(line.get("price"), "line price", code),  # unit_price
    )


def normalise_rest(checkout: Any) -> Cart:
    """A Cart from one REST `checkouts.json` element."""
    raw = mapping(checkout, "checkout")
    cart_id = _cart_id(raw.get("id"))
    created_at = timestamp(raw.get("created_at"), "created_at")
    updated = raw.get("updated_at")
    total = raw.get("total_price")
    code = currency(raw.get("currency") or raw.get("presentment_currency"))
    return Cart(
        cart_id=cart_id,
        customer=_rest_customer(raw.get("customer"), raw),
        items=tuple([_rest_item(line, code) for line in line_items(raw.get("line_items"))]),
        currency=code,
        created_at=created_at,
        last_activity=created_at if updated is None else timestamp(updated, "updated_at"),
        recovery_url=url(raw.get("abandoned_checkout_url"), "abandoned_checkout_url"),
        stated_total=None if total is None else money(total, "total_price", code),
        completed_at=optional_time(raw.get("completed_at"), "completed_at"),
        order_id=identifier(raw.get("order_id"), "order_id"),
    )
