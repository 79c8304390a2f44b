"""Each live client against aioresponses on the documented shapes: pagination, throttling
and every error, with secrets kept out of the messages."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from cartd.model import Cart
from cartd.sources import http
from cartd.sources.errors import IntegrationError
from cartd.sources.live import fetch_live
from cartd.sources.shopify_live import CHECKOUTS_PAGE, CHECKOUTS_QUERY, INLINE_LINES
from fakestore import fake_store
from harness import config

SINCE = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TOKEN = "shpat_secret_token_value"
KEY, SECRET = "ck_key_value_123", "cs_secret_value_456"
GRAPHQL = "https://acme.myshopify.com/admin/api/2026-10/graphql.json"
REST = re.compile(r"^https://acme\.myshopify\.com/admin/api/2026-10/checkouts\.json.*")
WOO = re.compile(r"^https://shop\.example\.com/wp-json/wc/v3/orders.*")
CUSTOM = "https://carts.example.com/api/carts"

SHOPIFY = {"shop_domain": "acme.myshopify.com", "access_token": TOKEN}
WOOCOMMERCE = {"base_url": "https://shop.example.com/", "consumer_key": KEY,
               "consumer_secret": SECRET}
CUSTOM_CONFIG = {"url": CUSTOM, "headers": {"Authorization": "Bearer custom_secret_abc"}}
SECRETS = (TOKEN, KEY, SECRET, "custom_secret_abc")


class _Sent:
    output_size = 0


class _Response(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without aiohttp 3.14's `stream_writer`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _Sent())
        super().__init__(*args, **kwargs)


@pytest.fixture
def mocked(monkeypatch):
    monkeypatch.setattr("aioresponses.core.ClientResponse", _Response)
    with aioresponses() as m:
        yield m


class Calls:
    """A callback for aioresponses that records each request and answers in turn."""

    def __init__(self, *answers: CallbackResult) -> None:
        self.answers = list(answers)
        self.seen: list[dict[str, Any]] = []

    def __call__(self, url, **kwargs) -> CallbackResult:
        self.seen.append({"url": str(url), **kwargs})
        return self.answers.pop(0)


async def fetch(platform: str, settings: dict[str, Any], *, since: datetime = SINCE,
                incremental: bool = False, **sections: Any) -> tuple[list[Cart], int]:
    read = await fetch_live(platform, settings, config(**sections), since,
                            incremental=incremental, now=NOW, budget=http.Budget(30))
    return read.carts, read.malformed


def gql_node(n: int, completed: bool = False) -> dict[str, Any]:
    return {
        "id": f"gid://shopify/AbandonedCheckout/{n}", "name": f"#{n}",
        "abandonedCheckoutUrl": f"https://acme.myshopify.com/r/{n}",
        "createdAt": "2026-11-23T08:00:00Z", "updatedAt": "2026-11-23T09:45:00Z",
        "completedAt": "2026-11-23T09:45:00Z" if completed else None,
        "customer": {"id": "gid://shopify/Customer/7", "firstName": "Ada", "lastName": "L",
                     "defaultEmailAddress": {"emailAddress": "a@example.com",
                                             "marketingState": "SUBSCRIBED"},
                     "defaultPhoneNumber": None},
        "totalPriceSet": {"shopMoney": {"amount": "398.00", "currencyCode": "USD"}},
        "lineItems": {"nodes": [{
            "title": "Boot", "variantTitle": "42", "sku": "B-42", "quantity": 2,
            "variant": {"id": "gid://shopify/ProductVariant/9"}, "product": {"id": "gid://shopify/Product/8"},
            "originalUnitPriceSet": {"shopMoney": {"amount": "199.00", "currencyCode": "USD"}}}]},
    }


def gql_page(nodes: list[Any], cursor: str | None, available: float = 1950) -> dict[str, Any]:
    return {
        "data": {"abandonedCheckouts": {"nodes": nodes, "pageInfo": {
            "hasNextPage": cursor is not None, "endCursor": cursor}}},
        "extensions": {"cost": {"requestedQueryCost": 52, "actualQueryCost": 12, "throttleStatus": {
            "maximumAvailable": 2000.0, "currentlyAvailable": available, "restoreRate": 100.0}}},
    }


THROTTLED = {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
             "extensions": {"cost": {"requestedQueryCost": 52, "actualQueryCost": None,
                                     "throttleStatus": {"maximumAvailable": 2000.0,
                                                        "currentlyAvailable": 42,
                                                        "restoreRate": 100.0}}}}


def rest_checkout(n: int) -> dict[str, Any]:
    return {"id": n, "email": "b@example.com", "phone": None, "buyer_accepts_marketing": False,
            "abandoned_checkout_url": f"https://acme.myshopify.com/r/{n}",
            "created_at": "2026-11-23T08:00:00-05:00", "updated_at": "2026-11-23T09:45:00Z",
            "completed_at": None, "currency": "EUR", "total_price": "29.35",
            "customer": {"id": 5, "email": "b@example.com", "first_name": "Bo", "last_name": "K",
                         "phone": None},
            "line_items": [{"title": "Mug", "variant_title": None, "quantity": 3, "price": "9.95",
                            "variant_id": 11, "product_id": 10, "sku": "MUG"}]}


def woo_order(n: int, status: str = "pending", modified: str = "2026-11-23T09:45:00") -> dict[str, Any]:
    return {"id": n, "number": str(n), "status": status, "currency": "USD",
            "date_created_gmt": "2026-11-23T08:00:00", "date_modified_gmt": modified,
            "date_paid_gmt": None, "total": "29.35", "customer_id": 0,
            "billing": {"first_name": "C", "last_name": "D", "email": "c@example.com", "phone": ""},
            "line_items": [{"name": "Tea", "product_id": 3, "variation_id": 0, "quantity": 1,
                            "subtotal": "29.35", "total": "29.35", "sku": "T", "price": 29.35}],
            "meta_data": []}


def custom_cart(n: int) -> dict[str, Any]:
    return {"cart_id": f"x{n}", "customer": {"email": "d@example.com"},
            "items": [{"title": "Pen", "quantity": 4, "unit_price": "1.10"}], "currency": "USD",
            "created_at": "2026-11-23T08:00:00Z", "abandoned_at": "2026-11-23T09:45:00Z"}


# --- Shopify GraphQL ------------------------------------------------------------


async def test_shopify_graphql_follows_the_cursor_with_the_documented_query(mocked):
    calls = Calls(CallbackResult(payload=gql_page([gql_node(1), gql_node(2)], "c1")),
                  CallbackResult(payload=gql_page([gql_node(3, completed=True)], None)))
    mocked.post(GRAPHQL, callback=calls, repeat=True)
    carts, malformed = await fetch("shopify", SHOPIFY)
    assert [c.cart_id for c in carts] == ["1", "2", "3"] and not malformed
    first, second = (call["json"] for call in calls.seen)
    assert first["query"] == CHECKOUTS_QUERY
    assert first["variables"] == {
        "first": CHECKOUTS_PAGE, "lines": INLINE_LINES, "after": None,
        "query": "updated_at:>'2026-11-23T09:30:00Z' AND updated_at:<='2026-11-23T12:00:00Z'"}
    assert second["variables"]["after"] == "c1"
    assert calls.seen[0]["headers"]["X-Shopify-Access-Token"] == TOKEN
    cart = carts[0]
    line = cart.items[0]
    assert cart.total_value == Decimal("398.00") and line.unit_price * line.quantity == Decimal("398.00")
    assert cart.customer.accepts_marketing and cart.items[0].title == "Boot - 42"
    assert carts[2].completed_at is not None


async def test_shopify_graphql_uses_the_configured_version_and_base_url(mocked):
    mocked.post("http://127.0.0.1:9/s/admin/api/2024-10/graphql.json",
                payload=gql_page([gql_node(1)], None))
    settings = {"base_url": "http://127.0.0.1:9/s", "access_token": TOKEN}
    carts, _ = await fetch("shopify", settings, platforms={"shopify": {"api_version": "2024-10"}})
    assert len(carts) == 1


@pytest.mark.parametrize("status", [200, 429])
async def test_shopify_graphql_throttled_waits_for_the_bucket_to_refill(mocked, status):
    mocked.post(GRAPHQL, status=status, payload=THROTTLED)
    mocked.post(GRAPHQL, payload=gql_page([gql_node(1)], None))
    started = time.monotonic()
    carts, _ = await fetch("shopify", SHOPIFY)
    assert len(carts) == 1
    assert time.monotonic() - started >= 0.09  # (52 - 42) / 100 per second


async def test_shopify_graphql_throttled_honours_retry_after(mocked):
    mocked.post(GRAPHQL, status=429, payload=THROTTLED, headers={"Retry-After": "0.2"})
    mocked.post(GRAPHQL, payload=gql_page([gql_node(1)], None))
    started = time.monotonic()
    assert len((await fetch("shopify", SHOPIFY))[0]) == 1
    assert time.monotonic() - started >= 0.19


async def test_shopify_graphql_waits_before_a_page_the_bucket_cannot_pay_for(mocked):
    mocked.post(GRAPHQL, payload=gql_page([gql_node(1)], "c1", available=933))
    mocked.post(GRAPHQL, payload=gql_page([gql_node(2)], None))
    started = time.monotonic()
    assert len((await fetch("shopify", SHOPIFY))[0]) == 2
    assert time.monotonic() - started >= 0.49  # (983 the next page costs - 933) / 100


async def test_a_throttle_longer_than_the_cap_fails_at_once(mocked):
    slow = json.loads(json.dumps(THROTTLED))
    slow["extensions"]["cost"]["throttleStatus"]["restoreRate"] = 0.1  # 100 s to refill
    mocked.post(GRAPHQL, payload=slow)
    started = time.monotonic()
    with pytest.raises(IntegrationError, match="rate limited by acme.myshopify.com"):
        await fetch("shopify", SHOPIFY)
    assert time.monotonic() - started < 1


async def test_endless_throttling_gives_up_after_the_retry_budget(mocked):
    mocked.post(GRAPHQL, status=429, headers={"Retry-After": "0"}, payload={}, repeat=True)
    with pytest.raises(IntegrationError, match="rate limited"):
        await fetch("shopify", SHOPIFY)
    assert sum(len(v) for v in mocked.requests.values()) == http.MAX_RETRIES + 1


async def test_a_page_too_costly_for_shopify_is_asked_again_smaller(mocked):
    too_costly = {"errors": [{"message": "Query cost is 64252, which exceeds the single query "
                                         "max cost limit (1000).",
                              "extensions": {"code": "MAX_COST_EXCEEDED", "cost": 64252,
                                             "maxCost": 1000}}]}
    calls = Calls(CallbackResult(payload=too_costly),
                  CallbackResult(payload=gql_page([gql_node(1)], "c1")),
                  CallbackResult(payload=gql_page([gql_node(2)], None)))
    mocked.post(GRAPHQL, callback=calls, repeat=True)
    carts, _ = await fetch("shopify", SHOPIFY)
    assert [c.cart_id for c in carts] == ["1", "2"]
    assert [call["json"]["variables"]["first"] for call in calls.seen] == [CHECKOUTS_PAGE, 1, 1]
    assert [call["json"]["variables"]["after"] for call in calls.seen] == [None, None, "c1"]


async def test_shopify_graphql_errors_are_reported(mocked):
    mocked.post(GRAPHQL, payload={"errors": [{"message": "Access denied for abandonedCheckouts field.",
                                              "extensions": {"code": "ACCESS_DENIED"}}]})
    with pytest.raises(IntegrationError, match="Access denied for abandonedCheckouts"):
        await fetch("shopify", SHOPIFY)


async def test_malformed_records_are_skipped_and_counted(mocked):
    broken = gql_node(2)
    broken["totalPriceSet"]["shopMoney"]["currencyCode"] = "dollars"
    mocked.post(GRAPHQL, payload=gql_page([gql_node(1), broken, "junk", gql_node(3)], None))
    carts, malformed = await fetch("shopify", SHOPIFY)
    assert [c.cart_id for c in carts] == ["1", "3"]
    assert malformed == {"currency is not an ISO 4217 code": 1, "checkout is not an object": 1}


async def test_a_response_without_the_connection_is_an_error(mocked):
    mocked.post(GRAPHQL, payload={"data": None})
    with pytest.raises(IntegrationError, match="malformed response"):
        await fetch("shopify", SHOPIFY)


# --- Shopify REST ---------------------------------------------------------------


async def test_shopify_rest_follows_link_next_exactly(mocked):
    following = ("https://acme.myshopify.com/admin/api/2026-10/checkouts.json"
                 "?limit=250&page_info=eyJsYXN0X2lkIjo0fQ%3D%3D")
    calls = Calls(
        CallbackResult(payload={"checkouts": [rest_checkout(1), rest_checkout(2)]},
                       headers={"Link": f'<{following}>; rel="next"',
                                "X-Shopify-Shop-Api-Call-Limit": "2/40"}),
        CallbackResult(payload={"checkouts": [rest_checkout(3)]},
                       headers={"Link": '<https://acme.myshopify.com/x?page_info=a>; rel="previous"'}),
    )
    mocked.get(REST, callback=calls, repeat=True)
    carts, _ = await fetch("shopify", {**SHOPIFY, "api": "rest"})
    assert [c.cart_id for c in carts] == ["1", "2", "3"]
    assert calls.seen[0]["params"] == {"limit": "250", "updated_at_min": "2026-11-23T09:30:00Z",
                                       "updated_at_max": "2026-11-23T12:00:00Z", "since_id": "0"}
    assert calls.seen[1]["url"] == following and calls.seen[1]["params"] is None
    cart = carts[0]
    assert cart.currency == "EUR" and cart.total_value == Decimal("29.35")
    assert cart.items[0].unit_price * cart.items[0].quantity == Decimal("29.85")
    assert not cart.customer.accepts_marketing


async def test_shopify_rest_api_can_come_from_the_platform_config(mocked):
    mocked.get(REST, payload={"checkouts": [rest_checkout(1)]})
    carts, _ = await fetch("shopify", SHOPIFY, platforms={"shopify": {"api": "rest"}})
    assert [c.cart_id for c in carts] == ["1"]


async def test_shopify_rest_429_waits_for_retry_after(mocked):
    mocked.get(REST, status=429, headers={"Retry-After": "0.25"}, payload={"errors": "Exceeded 2 calls per second"})
    mocked.get(REST, payload={"checkouts": [rest_checkout(1)]})
    started = time.monotonic()
    assert len((await fetch("shopify", {**SHOPIFY, "api": "rest"}))[0]) == 1
    assert time.monotonic() - started >= 0.24


def test_retry_after_parses_seconds_and_dates_and_falls_back_to_2s():
    assert http.retry_after({"Retry-After": "1.5"}) == 1.5
    assert http.retry_after({}) == 2.0
    assert http.retry_after({"Retry-After": "soon"}) == 2.0
    assert http.retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


async def test_a_full_leaky_bucket_pauses_before_the_next_page(mocked):
    following = "https://acme.myshopify.com/admin/api/2026-10/checkouts.json?page_info=p2"
    mocked.get(REST, payload={"checkouts": [rest_checkout(1)]},
               headers={"Link": f'<{following}>; rel="next"', "X-Shopify-Shop-Api-Call-Limit": "39/40"})
    mocked.get(REST, payload={"checkouts": []})
    started = time.monotonic()
    await fetch("shopify", {**SHOPIFY, "api": "rest"})
    assert time.monotonic() - started >= 0.99


# --- WooCommerce ----------------------------------------------------------------


async def test_woocommerce_pages_by_modification_from_the_newest_change_read(mocked):
    pages = [[woo_order(1, modified="2026-11-23T09:40:00"), woo_order(2, modified="2026-11-23T09:41:00")],
             [woo_order(3, modified="2026-11-23T09:41:00")],  # the same second: page 2 of it
             [woo_order(3, modified="2026-11-23T09:41:00"), woo_order(4, "processing",
                                                                      modified="2026-11-23T09:50:00")]]
    calls = Calls(*(CallbackResult(payload=p, headers={"X-WP-TotalPages": t, "X-WP-Total": "4"})
                    for p, t in zip(pages, ("3", "3", "1"))))
    mocked.get(WOO, callback=calls, repeat=True)
    carts, _ = await fetch("woocommerce", WOOCOMMERCE, incremental=True)
    assert [c.cart_id for c in carts] == ["1", "2", "3", "4"]
    assert [(call["params"]["modified_after"], call["params"]["page"]) for call in calls.seen] == [
        ("2026-11-23T09:30:00", "1"), ("2026-11-23T09:40:59", "1"), ("2026-11-23T09:40:59", "2")]
    params = calls.seen[0]["params"]
    assert params["status"] == "pending,failed,checkout-draft,processing,completed,on-hold"
    assert params["per_page"] == "100" and params["dates_are_gmt"] == "true"
    assert params["orderby"] == "modified" and params["order"] == "asc"
    assert calls.seen[0]["url"].startswith("https://shop.example.com/wp-json/wc/v3/orders?")
    assert calls.seen[0]["headers"]["Authorization"] == aiohttp.encode_basic_auth(KEY, SECRET)
    assert carts[0].total_value == Decimal("29.35") and carts[0].completed_at is None
    assert carts[3].completed_at is not None and carts[3].order_id == "4"


async def test_a_read_past_its_time_stops_after_its_first_page_and_says_so(mocked):
    pages = {"X-WP-TotalPages": "3"}
    calls = Calls(*[CallbackResult(payload=[woo_order(n)], headers=pages) for n in (1, 2, 3)])
    mocked.get(WOO, callback=calls, repeat=True)
    read = await fetch_live("woocommerce", WOOCOMMERCE, config(), SINCE, incremental=False,
                            now=NOW, budget=http.Budget(0))
    assert [c.cart_id for c in read.carts] == ["1"] and len(calls.seen) == 1
    assert read.stopped == "the cycle's time budget is spent"


async def test_woocommerce_statuses_come_from_the_integration_then_the_platform(mocked):
    calls = Calls(CallbackResult(payload=[]), CallbackResult(payload=[]))
    mocked.get(WOO, callback=calls, repeat=True)
    await fetch("woocommerce", {**WOOCOMMERCE, "statuses": ["pending"]})
    await fetch("woocommerce", WOOCOMMERCE, platforms={"woocommerce": {"statuses": ["failed"]}})
    assert [call["params"]["status"] for call in calls.seen] == ["pending", "failed"]


async def test_woocommerce_error_bodies_are_surfaced_without_secrets(mocked):
    mocked.get(WOO, status=401, payload={"code": "woocommerce_rest_cannot_view",
                                         "message": f"Sorry, you cannot list resources. {SECRET}",
                                         "data": {"status": 401}})
    with pytest.raises(IntegrationError) as caught:
        await fetch("woocommerce", WOOCOMMERCE)
    message = str(caught.value)
    assert "HTTP 401 from shop.example.com" in message
    assert "woocommerce_rest_cannot_view: Sorry, you cannot list resources." in message
    assert SECRET not in message and KEY not in message


async def test_woocommerce_429_is_waited_out(mocked):
    mocked.get(WOO, status=429, headers={"Retry-After": "0.1"}, body="slow down")
    mocked.get(WOO, payload=[woo_order(1)])
    assert len((await fetch("woocommerce", WOOCOMMERCE))[0]) == 1


# --- custom -----------------------------------------------------------------------


async def test_custom_follows_next_with_its_headers(mocked):
    second = "https://carts.example.com/api/carts?after=x2"
    calls = Calls(CallbackResult(payload={"carts": [custom_cart(1), custom_cart(2)], "next": second}),
                  CallbackResult(payload={"carts": [custom_cart(3)], "next": None}))
    mocked.get(re.compile(r"^https://carts\.example\.com/.*"), callback=calls, repeat=True)
    carts, _ = await fetch("custom", CUSTOM_CONFIG)
    assert [c.cart_id for c in carts] == ["x1", "x2", "x3"]
    assert [call["url"] for call in calls.seen] == [CUSTOM, second]
    assert all(call["headers"]["Authorization"] == "Bearer custom_secret_abc" for call in calls.seen)
    assert carts[0].total_value == Decimal("4.40")


async def test_custom_next_pointing_back_is_refused(mocked):
    mocked.get(CUSTOM, payload={"carts": [], "next": CUSTOM})
    with pytest.raises(IntegrationError, match="next is a page already read"):
        await fetch("custom", CUSTOM_CONFIG)


@pytest.mark.parametrize("following", [
    "https://collector.example.net/steal", "https://carts.example.com:8443/api/carts?p=2",
    "/api/carts?p=2", 42, "https://[::1/x"])
async def test_a_custom_next_page_off_the_stores_origin_gets_no_credentials(mocked, following):
    mocked.get(CUSTOM, payload={"carts": [custom_cart(1)], "next": following})
    stolen = Calls()
    mocked.get(re.compile(r"^https://(collector|carts\.example\.com:8443).*"), callback=stolen)
    with pytest.raises(IntegrationError, match="next page is (on|not an absolute URL)"):
        await fetch("custom", CUSTOM_CONFIG)
    assert stolen.seen == []


async def test_a_shopify_rest_link_to_another_host_gets_no_token(mocked):
    mocked.get(REST, payload={"checkouts": [rest_checkout(1)]},
               headers={"Link": '<https://collector.example.net/x?page_info=a>; rel="next"'})
    stolen = Calls()
    mocked.get(re.compile(r"^https://collector\.example\.net/.*"), callback=stolen)
    with pytest.raises(IntegrationError, match="next page is on https://collector.example.net, "
                                               "not on https://acme.myshopify.com"):
        await fetch("shopify", {**SHOPIFY, "api": "rest"})
    assert stolen.seen == []


async def test_a_store_paging_without_records_fails_within_twice_its_requests(mocked):
    calls = Calls(*[CallbackResult(payload=gql_page([], f"c{n}")) for n in range(1000)])
    mocked.post(GRAPHQL, callback=calls, repeat=True)
    with pytest.raises(IntegrationError, match="no record read completely"):
        await fetch("shopify", SHOPIFY)
    assert len(calls.seen) == 2 * http.MAX_REQUESTS


async def test_a_checkout_whose_lines_never_end_stops_past_the_line_limit(mocked):
    checkout = gql_node(1)
    checkout["lineItems"]["pageInfo"] = {"hasNextPage": True, "endCursor": "l0"}
    line = checkout["lineItems"]["nodes"][0]
    lines = [CallbackResult(payload={"data": {"node": {"lineItems": {
        "nodes": [line] * 249, "pageInfo": {"hasNextPage": True, "endCursor": f"l{n}"}}}}})
        for n in range(1, 100)]
    calls = Calls(CallbackResult(payload=gql_page([checkout, gql_node(2)], None)), *lines)
    mocked.post(GRAPHQL, callback=calls, repeat=True)
    carts, malformed = await fetch("shopify", SHOPIFY)
    assert [c.cart_id for c in carts] == ["2"]
    assert malformed == {"cart has more than 1000 lines": 1}
    assert len(calls.seen) == 1 + 5  # 1 + 5 × 249 lines > 1,000


# --- errors shared by every client ----------------------------------------------

CASES = [
    ("shopify", SHOPIFY, GRAPHQL, "post"),
    ("shopify", {**SHOPIFY, "api": "rest"}, REST, "get"),
    ("woocommerce", WOOCOMMERCE, WOO, "get"),
    ("custom", CUSTOM_CONFIG, CUSTOM, "get"),
]


@pytest.mark.parametrize("platform, settings, url, method", CASES)
@pytest.mark.parametrize("answer, reason", [
    ({"status": 401, "payload": {"errors": "[API] Invalid API key or access token"}},
     "HTTP 401 from .*: unauthorized, check the credentials: \\[API\\] Invalid API key"),
    ({"status": 403, "payload": {}}, "HTTP 403 from .*: forbidden"),
    ({"status": 404, "payload": {}}, "HTTP 404 from .*: not found"),
    ({"status": 502, "body": "<html>Bad gateway</html>"}, "HTTP 502 from "),
    ({"status": 301, "headers": {"Location": "https://elsewhere.example.com/"}},
     "HTTP 301 .*redirects are not followed"),
    ({"status": 200, "body": "{not json"}, "malformed JSON from "),
    ({"status": 200, "payload": {"unexpected": True}}, "malformed response"),
    ({"exception": asyncio.TimeoutError()}, "did not answer within 30 s"),
    ({"exception": aiohttp.ClientConnectionError(f"refused ?consumer_secret={SECRET}&token={TOKEN}")},
     "request to .* failed: refused"),
])
async def test_every_failure_is_one_clear_line_without_secrets(
    mocked, platform, settings, url, method, answer, reason
):
    if platform == "woocommerce" and answer.get("payload") == {"unexpected": True}:
        answer = {"status": 200, "payload": {"orders": []}}
    getattr(mocked, method)(url, **answer)
    with pytest.raises(IntegrationError, match=reason) as caught:
        await fetch(platform, settings)
    message = str(caught.value)
    assert "\n" not in message
    assert not any(secret in message for secret in SECRETS)


async def test_a_header_value_aiohttp_refuses_is_an_error_without_the_value():
    async with fake_store() as server:
        server.add("s", [])
        settings = {"url": f"{server.base('s')}/carts",
                    "headers": {"Authorization": "Bearer secret_abc\r\nX-Evil: 1"}}
        with pytest.raises(IntegrationError, match="request to 127.0.0.1 failed") as caught:
            await fetch("custom", settings)
    assert "secret_abc" not in str(caught.value)


@pytest.mark.parametrize("platform, settings, url, method", CASES)
async def test_an_oversized_response_is_refused(mocked, monkeypatch, platform, settings, url, method):
    monkeypatch.setattr(http, "MAX_BODY_BYTES", 1000)
    getattr(mocked, method)(url, body=b"[" + b" " * 1000 + b"]")
    with pytest.raises(IntegrationError, match="exceeds 1000 bytes"):
        await fetch(platform, settings)


@pytest.mark.parametrize("platform, settings, missing", [
    ("shopify", SHOPIFY, "access_token"),
    ("shopify", SHOPIFY, "shop_domain"),
    ("woocommerce", WOOCOMMERCE, "base_url"),
    ("woocommerce", WOOCOMMERCE, "consumer_key"),
    ("woocommerce", WOOCOMMERCE, "consumer_secret"),
    ("custom", CUSTOM_CONFIG, "url"),
])
async def test_a_missing_credential_or_address_is_named(platform, settings, missing):
    broken = {k: v for k, v in settings.items() if k != missing}
    with pytest.raises(IntegrationError, match=f"config.{missing} is missing"):
        await fetch(platform, broken)


@pytest.mark.parametrize("platform, settings", [
    ("shopify", {**SHOPIFY, "base_url": "http://acme.example.com"}),
    ("woocommerce", {**WOOCOMMERCE, "base_url": "http://shop.example.com"}),
    ("custom", {**CUSTOM_CONFIG, "url": "http://10.0.0.5/carts"}),
    ("custom", {**CUSTOM_CONFIG, "url": "ftp://carts.example.com/"}),
])
async def test_plain_http_is_refused_except_to_loopback(platform, settings):
    with pytest.raises(IntegrationError, match="plain http is refused|not an http"):
        await fetch(platform, settings)


async def test_a_next_link_to_plain_http_is_refused(mocked):
    mocked.get(CUSTOM, payload={"carts": [], "next": "http://carts.example.com/page2"})
    with pytest.raises(IntegrationError, match="next page is on http://carts.example.com"):
        await fetch("custom", CUSTOM_CONFIG)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("10.0.0.1", False), ("example.com", False), ("169.254.169.254", False),
])
def test_loopback_hosts(host, loopback):
    assert http.is_loopback(host) is loopback


def test_scrub_hides_secrets_and_credential_parameters():
    text = f"GET https://s.example.com/x?consumer_key=ck_1&consumer_secret=cs_2&page=2 {TOKEN}"
    assert http.scrub(text, [TOKEN]) == (
        "GET https://s.example.com/x?consumer_key=***&consumer_secret=***&page=2 ***")


async def test_one_session_serves_every_fetch_until_closed(mocked):
    mocked.post(GRAPHQL, payload=gql_page([], None), repeat=True)
    await fetch("shopify", SHOPIFY)
    first = http.session()
    await fetch("shopify", SHOPIFY)
    assert http.session() is first
    await http.close()
    assert first.closed
    assert http.session() is not first


@pytest.mark.parametrize("platform, settings, error", [
    ("woocommerce", {**WOOCOMMERCE, "auth": "cookie"}, "config.auth must be header or query"),
    ("woocommerce", {**WOOCOMMERCE, "placed_statuses": []},
     "config.placed_statuses must be a non-empty list"),
    ("woocommerce", {**WOOCOMMERCE, "consent_meta_key": ""},
     "config.consent_meta_key must be a non-empty string"),
    ("shopify", {"shop_domain": "acme.myshopify.com", "client_id": "abc"},
     "config.client_secret is missing"),
])
async def test_a_bad_connector_option_is_named(platform, settings, error):
    with pytest.raises(IntegrationError, match=error):
        await fetch(platform, settings)
