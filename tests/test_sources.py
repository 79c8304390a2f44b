"""Normalisers of the three platforms, and the mock stores built on them."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from cartd import payload
from cartd.config import MockConfig
from cartd.model import MalformedRecord
from cartd.sources import custom, shopify, woocommerce
from cartd.sources.mock import MAX_AGE, mock_carts, mock_records
from records import custom_cart, graphql_node, rest_checkout, woo_order

NOW = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
EPOCH = NOW - timedelta(hours=24)
MOCK = MockConfig()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


# Shopify


def test_graphql_documented_shape() -> None:
    cart = shopify.normalise_graphql(graphql_node())
    assert cart.cart_id == "123"
    assert cart.customer.id == "77"
    assert cart.customer.email == "ada@example.com"
    assert (cart.customer.first_name, cart.customer.last_name) == ("Ada", "Lovelace")
    assert cart.customer.accepts_marketing is True
    (item,) = cart.items
    assert (item.product_id, item.variant_id, item.sku) == ("8", "9", "MUG-L")
    assert item.title == "Mug - Large"
    assert item.unit_price * item.quantity == Decimal("59.97")
    assert cart.total_value == Decimal("59.97")
    assert cart.currency == "USD"
    assert cart.created_at == at("2026-11-23T08:10:00Z")
    assert cart.last_activity == at("2026-11-23T08:25:00Z")
    assert cart.recovery_url == "https://acme.example.com/checkouts/ac/abc/recover"
    assert (cart.completed_at, cart.order_id) == (None, None)


def test_graphql_discounted_total_and_completion() -> None:
    node = graphql_node(
        totalPriceSet={"shopMoney": {"amount": "53.97", "currencyCode": "USD"}},
        completedAt="2026-11-23T09:00:00Z",
    )
    cart = shopify.normalise_graphql(node)
    assert cart.total_value == Decimal("53.97")
    assert cart.to_payload()["total_value"] == Decimal("53.97")
    assert cart.completed_at == at("2026-11-23T09:00:00Z")


@pytest.mark.parametrize("state", ["NOT_SUBSCRIBED", "UNSUBSCRIBED", "PENDING", None])
def test_graphql_consent_other_states(state: str | None) -> None:
    node = graphql_node()
    node["customer"]["defaultEmailAddress"] = (
        None if state is None else {"emailAddress": "ada@example.com", "marketingState": state})
    assert shopify.normalise_graphql(node).customer.accepts_marketing is False


def test_graphql_guest_checkout() -> None:
    cart = shopify.normalise_graphql(graphql_node(customer=None))
    assert cart.customer.email is None and not cart.has_contact


def test_graphql_jpy_is_rounded_once_to_whole_yen() -> None:
    """Each amount is rounded where it enters (half to even); the line total is then the
    unit price as written times the quantity."""
    node = graphql_node(totalPriceSet={"shopMoney": {"amount": "1000.5", "currencyCode": "JPY"}})
    line = node["lineItems"]["nodes"][0]
    line["originalUnitPriceSet"]["shopMoney"] = {"amount": "333.5", "currencyCode": "JPY"}
    cart = shopify.normalise_graphql(node)
    payload = cart.to_payload()
    assert payload["total_value"] == Decimal("1000")
    assert payload["items"][0]["unit_price"] == Decimal("334")
    assert payload["items"][0]["line_total"] == Decimal("1002")


def test_graphql_mixed_currency_is_malformed() -> None:
    node = graphql_node()
    node["lineItems"]["nodes"][0]["originalUnitPriceSet"]["shopMoney"]["currencyCode"] = "EUR"
    with pytest.raises(MalformedRecord, match="currency"):
        shopify.normalise_graphql(node)


def test_rest_documented_shape() -> None:
    cart = shopify.normalise_rest(rest_checkout())
    assert cart.cart_id == "450789469"
    assert cart.customer.id == "207119551"
    assert cart.customer.accepts_marketing is True
    assert cart.items[0].title == "IPod Nano"
    assert cart.items[0].unit_price == Decimal("199.00")
    assert (cart.items[0].product_id, cart.items[0].variant_id) == ("632910392", "39072856")
    assert cart.total_value == Decimal("398.00")
    assert cart.created_at == at("2026-11-23T13:10:00Z")
    assert cart.last_activity == at("2026-11-23T13:25:00Z")
    assert cart.recovery_url == "https://acme.example.com/recover/450789469"
    assert cart.completed_at is None


def test_rest_guest_email_completion_and_consent() -> None:
    checkout = rest_checkout(customer=None, completed_at="2026-11-23T14:00:00Z", order_id=55,
                             buyer_accepts_marketing=False)
    cart = shopify.normalise_rest(checkout)
    assert cart.customer.email == "bob@example.net"
    assert cart.customer.accepts_marketing is False
    assert cart.completed_at == at("2026-11-23T14:00:00Z")
    assert cart.order_id == "55"


# WooCommerce


def test_woo_documented_shape() -> None:
    cart = woocommerce.normalise(woo_order())
    assert cart.cart_id == "727"
    assert cart.currency == "EUR"
    assert cart.created_at == at("2026-11-23T08:10:00Z")
    assert cart.last_activity == at("2026-11-23T08:25:00Z")
    assert cart.customer.id is None
    assert (cart.customer.email, cart.customer.phone) == (None, "+4930123")
    assert cart.customer.accepts_marketing is False
    (item,) = cart.items
    assert (item.product_id, item.variant_id, item.sku) == ("93", None, None)
    assert item.unit_price == Decimal("19.99")
    assert item.unit_price * item.quantity == Decimal("59.97")
    assert cart.total_value == Decimal("59.97")
    assert cart.recovery_url.startswith("https://acme.example.com/checkout/order-pay/727/")
    assert (cart.completed_at, cart.order_id) == (None, None)


def test_woo_unit_price_falls_back_to_price_via_str() -> None:
    """A price with more digits than the currency's is rounded once; the body's line
    total is that price times the quantity, the order's total stays the stated one."""
    line = {"name": "Third", "product_id": 1, "quantity": 3, "subtotal": "10.00"}
    order = woo_order(line_items=[{**line, "price": 3.3333333333333335}], total="10.00")
    cart = woocommerce.normalise(order)
    assert cart.items[0].unit_price == Decimal("3.33")
    assert cart.items[0].unit_price * cart.items[0].quantity == Decimal("9.99")
    assert cart.total_value == Decimal("10.00")
    cart = woocommerce.normalise(woo_order(line_items=[{**line, "quantity": 2, "price": 5.0}]))
    assert cart.items[0].unit_price == Decimal("5.00")


@pytest.mark.parametrize(
    ("changes", "placed"),
    [
        ({"status": "processing", "date_paid_gmt": "2026-11-23T09:00:00"}, "2026-11-23T09:00:00Z"),
        ({"status": "completed", "date_completed_gmt": "2026-11-23T09:30:00"}, "2026-11-23T09:30:00Z"),
        ({"status": "on-hold"}, "2026-11-23T08:25:00Z"),
    ],
)
def test_woo_completed_statuses(changes: dict[str, Any], placed: str) -> None:
    cart = woocommerce.normalise(woo_order(**changes))
    assert changes["status"] in woocommerce.PLACED_STATUSES
    assert cart.completed_at == at(placed)
    assert cart.order_id == "727"


@pytest.mark.parametrize(
    ("meta", "consent"),
    [
        ([{"key": "marketing_consent", "value": "yes"}], True),
        ([{"key": "marketing_consent", "value": True}], True),
        ([{"key": "marketing_consent", "value": "no"}], False),
        ([{"key": "other", "value": "yes"}], False),
        (None, False),
    ],
)
def test_woo_consent(meta: Any, consent: bool) -> None:
    order = woo_order(meta_data=meta, customer_id=12)
    cart = woocommerce.normalise(order, consent_key="marketing_consent")
    assert cart.customer.accepts_marketing is consent
    assert cart.customer.id == "12"


# Custom


def test_custom_documented_shape_and_exact_money() -> None:
    cart = custom.normalise(custom_cart())
    assert cart.cart_id == "c-1"
    assert cart.currency == "USD"
    assert cart.customer.accepts_marketing is True
    assert cart.customer.last_name is None
    assert cart.items[0].unit_price == Decimal("0.1")
    assert cart.total_value == Decimal("0.30")
    assert cart.last_activity == at("2026-11-23T08:25:00Z")
    assert (cart.completed_at, cart.order_id, cart.stated_total) == (None, None, None)


def test_custom_string_money_updated_at_and_completion() -> None:
    cart = custom.normalise(
        custom_cart(
            total_value="12.34",
            updated_at="2026-11-23T09:00:00Z",
            completed_at="2026-11-23T10:00:00Z",
            order_id=991,
        )
    )
    assert cart.total_value == Decimal("12.34")
    assert cart.last_activity == at("2026-11-23T09:00:00Z")
    assert cart.completed_at == at("2026-11-23T10:00:00Z")
    assert cart.order_id == "991"


def test_body_times_are_utc_to_the_second_with_z() -> None:
    """Stores and clocks with other offsets and fractions of seconds: the webhook body
    always says UTC, to the second, with `Z`."""
    cart = custom.normalise(custom_cart(
        created_at="2026-11-23T10:10:00.654321+02:00",
        abandoned_at="2026-11-23T03:25:59.9-05:00",
        completed_at="2026-11-23T09:00:00.5Z",
    ))
    now = datetime(2026, 11, 23, 13, 30, 1, 999999, tzinfo=timezone(timedelta(hours=3)))
    detected = json.loads(payload.build(event=payload.DETECTED, now=now, agent={}, company={},
                                        integration={"platform": "custom"}, carts=[cart]))
    assert detected["timestamp"] == "2026-11-23T10:30:01Z"
    entry = detected["abandoned_carts"][0]
    assert (entry["created_at"], entry["abandoned_at"]) == ("2026-11-23T08:10:00Z",
                                                            "2026-11-23T08:25:59Z")
    recovered = json.loads(payload.build(event=payload.RECOVERED, now=now, agent={}, company={},
                                         integration={"platform": "custom"}, carts=[cart]))
    assert recovered["abandoned_carts"][0]["recovered_at"] == "2026-11-23T09:00:00Z"


# Malformed records


def _break(record: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    broken = copy.deepcopy(record)
    target = broken
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return broken


PLATFORMS = {
    "graphql": (shopify.normalise_graphql, graphql_node()),
    "rest": (shopify.normalise_rest, rest_checkout()),
    "woo": (woocommerce.normalise, woo_order()),
    "custom": (custom.normalise, custom_cart()),
}
GRAPHQL_LINE = ("lineItems", "nodes", 0)
PATHS = {
    "id": {"graphql": ("id",), "rest": ("id",), "woo": ("id",), "custom": ("cart_id",)},
    "created": {
        "graphql": ("createdAt",),
        "rest": ("created_at",),
        "woo": ("date_created_gmt",),
        "custom": ("created_at",),
    },
    "currency": {
        "graphql": ("totalPriceSet", "shopMoney", "currencyCode"),
        "rest": ("currency",),
        "woo": ("currency",),
        "custom": ("currency",),
    },
    "items": {
        "graphql": ("lineItems", "nodes"),
        "rest": ("line_items",),
        "woo": ("line_items",),
        "custom": ("items",),
    },
    "item": {
        "graphql": GRAPHQL_LINE,
        "rest": ("line_items", 0),
        "woo": ("line_items", 0),
        "custom": ("items", 0),
    },
    "quantity": {
        "graphql": (*GRAPHQL_LINE, "quantity"),
        "rest": ("line_items", 0, "quantity"),
        "woo": ("line_items", 0, "quantity"),
        "custom": ("items", 0, "quantity"),
    },
    "price": {
        "graphql": (*GRAPHQL_LINE, "originalUnitPriceSet", "shopMoney", "amount"),
        "rest": ("line_items", 0, "price"),
        "woo": ("line_items", 0, "subtotal"),
        "custom": ("items", 0, "unit_price"),
    },
}
CASES = [
    ("id", None, "missing"),
    ("id", "", "missing"),
    ("created", "yesterday", "ISO 8601"),
    ("created", None, "missing"),
    ("currency", None, "currency"),
    ("currency", "US", "currency"),
    ("items", [], "no items"),
    ("items", "mug", "not a list"),
    ("item", "mug", "not an object"),
    ("quantity", 0, "quantity"),
    ("quantity", -1, "quantity"),
    ("quantity", 1.5, "quantity"),
    ("quantity", "two", "quantity"),
    ("quantity", True, "quantity"),
    ("price", "-1.00", ">= 0"),
    ("price", "abc", "not a number"),
    ("price", "NaN", ">= 0"),
]


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
@pytest.mark.parametrize(("field", "value", "reason"), CASES)
def test_malformed_records(platform: str, field: str, value: Any, reason: str) -> None:
    normalise, record = PLATFORMS[platform]
    with pytest.raises(MalformedRecord, match=reason):
        normalise(_break(record, PATHS[field][platform], value))


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
@pytest.mark.parametrize("record", [None, [], "cart", 7])
def test_not_an_object_is_malformed(platform: str, record: Any) -> None:
    with pytest.raises(MalformedRecord, match="not an object"):
        PLATFORMS[platform][0](record)


def test_customer_not_an_object_is_malformed() -> None:
    with pytest.raises(MalformedRecord, match="customer"):
        custom.normalise(custom_cart(customer="dee"))
    with pytest.raises(MalformedRecord, match="customer"):
        shopify.normalise_rest(rest_checkout(customer=["bob"]))


def test_missing_title_is_malformed() -> None:
    with pytest.raises(MalformedRecord, match="title"):
        custom.normalise(_break(custom_cart(), ("items", 0, "title"), ""))


# Mock stores


def carts(platform: str = "shopify", **kwargs: Any) -> list[Any]:
    found, malformed = mock_carts(
        platform,
        kwargs.get("integration", "int-a"),
        kwargs.get("epoch", EPOCH),
        kwargs.get("since"),
        kwargs.get("now", NOW),
        kwargs.get("mock", MOCK),
    )
    assert not malformed
    return found


@pytest.mark.parametrize("platform", ["shopify", "woocommerce", "custom"])
def test_mock_first_poll_holds_a_day_of_valid_carts(platform: str) -> None:
    found = carts(platform)
    assert 130 <= len(found) <= 150
    assert all(c.cart_id.startswith("mock_") for c in found)
    assert len({c.cart_id for c in found}) == len(found)
    assert all(EPOCH <= c.created_at < c.last_activity <= NOW for c in found if not c.completed_at)
    domains = {c.customer.email.rsplit("@", 1)[1] for c in found if c.customer.email}
    assert domains == {"example.com", "example.net", "example.org"}
    assert all(c.recovery_url.startswith("https://") for c in found)
    assert all(".example.com/" in c.recovery_url for c in found)
    assert all(1 <= len(c.items) <= 4 for c in found)
    assert all(1 <= i.quantity <= 3 and i.unit_price > 0 for c in found for i in c.items)
    assert len({c.currency for c in found}) == 1


def test_mock_platforms_share_slots() -> None:
    ids = [[c.cart_id for c in carts(p)] for p in ("shopify", "woocommerce", "custom")]
    assert ids[0] == ids[1] == ids[2]


@pytest.mark.parametrize("platform", ["shopify", "woocommerce", "custom"])
def test_mock_is_stable_and_grows(platform: str) -> None:
    first = mock_records(platform, "int-a", EPOCH, None, NOW, MOCK)
    assert mock_records(platform, "int-a", EPOCH, None, NOW, MOCK) == first
    # A later poll holds the same carts (those not completed in between are unchanged) plus new ones.
    later = {c.cart_id: c for c in carts(platform, now=NOW + timedelta(hours=3))}
    before = {c.cart_id: c for c in carts(platform)}
    assert set(before) <= set(later) and len(later) > len(before) + 10
    unchanged = [i for i, c in before.items() if later[i].completed_at is None]
    assert all(later[i] == before[i] for i in unchanged)


def test_mock_since_filters_on_update_time() -> None:
    since = NOW - timedelta(hours=2)
    recent = carts(since=since)
    everything = carts()
    expected = [c for c in everything if (c.completed_at or c.last_activity) > since]
    assert [c.cart_id for c in recent] == [c.cart_id for c in expected]
    assert 5 <= len(recent) < len(everything)
    assert carts(since=NOW) == []


def test_mock_completions_appear_over_time() -> None:
    mock = MockConfig(recovery_rate=0.5)
    before = {c.cart_id: c for c in carts(mock=mock)}
    later = {c.cart_id: c for c in carts(mock=mock, now=NOW + timedelta(hours=12))}
    assert all(c.completed_at is None or c.completed_at <= NOW for c in before.values())
    newly = [i for i, c in before.items() if c.completed_at is None and later[i].completed_at]
    assert newly
    done = [c for c in later.values() if c.completed_at]
    assert 0.3 < len(done) / len(later) < 0.7
    assert all(c.completed_at >= c.created_at + timedelta(minutes=11) for c in done)


def test_mock_custom_completion_carries_order_id() -> None:
    done = [c for c in carts("custom", mock=MockConfig(recovery_rate=1)) if c.completed_at]
    assert done and all(c.order_id and c.order_id.startswith("mock_") for c in done)


def test_mock_work_is_bounded_to_eight_days() -> None:
    found = carts(epoch=NOW - timedelta(days=30))
    assert all(c.last_activity >= NOW - timedelta(seconds=MAX_AGE) for c in found)
    assert 8 * 24 * 6 - 10 <= len(found) <= 8 * 24 * 6 + 10


def test_mock_population_mix() -> None:
    found = [c for i in range(8) for c in carts("custom", integration=f"int-{i}")]
    share = len(found) / 100
    no_email = [c for c in found if not c.customer.email]
    assert 4 * share < len([c for c in no_email if c.customer.phone]) < 18 * share
    assert 1 * share < len([c for c in no_email if not c.customer.phone]) < 10 * share
    assert 35 * share < len([c for c in found if c.customer.accepts_marketing]) < 65 * share
    assert {c.currency for c in found} <= {"USD", "EUR", "GBP"}


def test_mock_shopify_discounts_are_stated() -> None:
    found = [c for i in range(3) for c in carts(integration=f"int-{i}")]
    lines = [sum(i.unit_price * i.quantity for i in c.items) for c in found]
    discounted = [c for c, total in zip(found, lines) if c.total_value < total]
    assert discounted and len(discounted) < len(found) / 3
    assert all(c.total_value == total for c, total in zip(found, lines) if c not in discounted)


def test_mock_unknown_platform() -> None:
    with pytest.raises(ValueError, match="magento"):
        mock_carts("magento", "int-a", EPOCH, None, NOW, MOCK)
    with pytest.raises(ValueError, match="magento"):
        mock_records("magento", "int-a", EPOCH, None, NOW, MOCK)
