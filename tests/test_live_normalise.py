"""The normalisers on the platforms' own examples (tests/fixtures/, sources in its README):
Shopify's REST checkouts and WooCommerce's order examples."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cartd.sources import shopify, woocommerce

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def example(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


REST = {
    "shopify/rest_checkouts.shopify-app-js.2025-10.json": (Decimal("379.69"), "+16136120707"),
    "shopify/rest_checkouts.shopify_python_api.json": (Decimal("409.94"), None),
}


@pytest.mark.parametrize("name", REST)
def test_shopify_rest_checkouts_carry_the_total_after_discounts_and_the_buyers_consent(name):
    (checkout,) = example(name)["checkouts"]
    cart = shopify.normalise_rest(checkout)
    total, phone = REST[name]
    assert cart.cart_id == "450789469" and cart.currency == "USD"
    assert cart.total_value == total  # total_price: after the discount, with tax
    assert [(i.title, i.sku, i.quantity, i.unit_price) for i in cart.items] == [
        ("IPod Nano - 8GB - Red", "IPOD2008RED", 1, Decimal("199.00")),
        ("IPod Nano - 8GB - Pink", "IPOD2008PINK", 1, Decimal("199.00"))]
    assert cart.customer == ("207119551", checkout["email"], "Bob", "Norman", phone, False)
    assert cart.created_at == cart.last_activity == utc("2012-10-12T11:05:27")
    assert cart.recovery_url == checkout["abandoned_checkout_url"]
    assert cart.completed_at is None
    consenting = copy.deepcopy(checkout) | {"buyer_accepts_marketing": True}
    assert shopify.normalise_rest(consenting).customer.accepts_marketing is True


def test_woocommerce_placed_orders_are_recoveries_with_names_decoded():
    processing, completed = (woocommerce.normalise(o) for o in
                             example("woocommerce/orders_list_processing_completed.json"))
    assert (processing.cart_id, processing.order_id) == ("727", "727")
    assert processing.completed_at == utc("2017-03-22T19:28:08")  # date_paid_gmt
    assert [(i.title, i.quantity, i.unit_price) for i in processing.items] == [
        ("Woo Single #1", 2, Decimal("3.00")),
        ("Ship Your Idea \u2013 Color: Black, Size: M Test", 1, Decimal("12.00"))]
    assert processing.total_value == Decimal("29.35")
    assert processing.customer == (None, "john.doe@example.com", "John", "Doe",
                                   "(555) 555-5555", False)
    assert completed.completed_at == utc("2017-03-21T19:54:51")  # date_completed_gmt


def test_woocommerce_pending_order_is_a_cart_and_placed_statuses_decide_recovery():
    pending, processing = example("woocommerce/orders_batch_with_pending.json")["create"]
    cart = woocommerce.normalise(pending)
    assert cart.completed_at is None and cart.total_value == Decimal("62.25")
    assert [i.title for i in cart.items][-1] == "Ship Your Idea \u2013 Color: Black, Size: M Test"
    assert woocommerce.normalise(processing).completed_at is not None
    assert woocommerce.normalise(processing, placed=("completed",)).completed_at is None


def test_woocommerce_consent_comes_only_from_the_configured_meta_key():
    order = example("woocommerce/orders_list_processing_completed.json")[0]
    assert order["meta_data"][0] == {"id": 13106, "key": "_download_permissions_granted",
                                     "value": "yes"}
    assert woocommerce.normalise(order).customer.accepts_marketing is False
    consent = woocommerce.normalise(order, consent_key="_download_permissions_granted")
    assert consent.customer.accepts_marketing is True
    assert woocommerce.normalise(order, consent_key="newsletter").customer.accepts_marketing is False
