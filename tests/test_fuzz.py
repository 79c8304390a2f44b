"""Property tests over each platform's record shape: real records mutated field by field
(types swapped, nulls, huge and tiny numbers, odd strings, missing keys, duplicates) and
JSON generated freely in the same shape, through the normaliser, the filters, the dedupe
and the payload builder. Nothing raises but MalformedRecord; every body is strict JSON
whose money adds up exactly on the numbers written; the dedupe key is stable.

Real records: the Shopify REST checkouts and the WooCommerce orders list example in
tests/fixtures/ (their sources: tests/fixtures/README.md).
The GraphQL node and the custom cart are the documented shapes of test_sources, and the
mock stores' records join every platform's set.

Profiles: tests/conftest.py (`HYPOTHESIS_PROFILE=fuzz` or `-m fuzz` for the long run).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cartd import payload
from cartd.config import MockConfig
from cartd.model import Cart, MalformedRecord, minor_units, quantize
from cartd.rules import Rules, agent_rules
from cartd.sources import custom, shopify, woocommerce
from cartd.sources.fields import Gathered
from cartd.sources.mock import mock_records
from harness import config
from records import custom_cart, graphql_node, rest_checkout, woo_order

pytestmark = pytest.mark.fuzz

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
AGENT = {"id": "a-1", "name": "Agent", "company": "Co", "company_id": "c-1",
         "template_slug": "ecommerce-abandoned-cart"}
COMPANY = {"id": "c-1", "name": "Co", "website": None, "email": None, "phone": None}
EVERYTHING = Rules(abandoned_after=timedelta(0), max_age=timedelta(days=365 * 100),
                   min_value=Decimal(0), require_contact=False, require_marketing_consent=False,
                   url=None, url_error=None)
DEFAULT_RULES = agent_rules({}, config())
DROP_REASONS = {"completed", "too recent", "too old", "too cheap", "no contact", "no consent"}
JS_SAFE = 2**53  # integers every JSON parser reads exactly (64-bit ints and doubles)


def _mock(platform: str) -> list[dict[str, Any]]:
    records = mock_records(platform, "fuzz", NOW - timedelta(hours=6), None, NOW, MockConfig())
    return copy.deepcopy(records[:3])


def _woo_orders() -> list[dict[str, Any]]:
    orders = json.loads(
        (FIXTURES / "woocommerce" / "orders_list_processing_completed.json").read_text())
    pending = [{**order, "status": "pending", "date_paid_gmt": None} for order in orders]
    return orders + pending + [woo_order()] + _mock("woocommerce")


PLATFORMS = {
    "graphql": (shopify.normalise_graphql, [graphql_node(), *_mock("shopify")]),
    "rest": (shopify.normalise_rest,
             [*json.loads((FIXTURES / "shopify" / "rest_checkouts.shopify-app-js.2025-10.json")
                          .read_text())["checkouts"], rest_checkout()]),
    "woocommerce": (woocommerce.normalise, _woo_orders()),
    "custom": (custom.normalise, [custom_cart(), *_mock("custom")]),
}

# --- hostile values ---------------------------------------------------------

ODD_TEXT = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(categories=["Cs", "Cc", "Zs", "Mn", "So"]), max_size=8),
    st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "\u202e", "é", "😀",
                     "x" * 5000, "1e400", "-0", "0.005", "1_000", "١٢٣", " 7 ", "NaN", "sNaN",
                     "Infinity", "-Infinity", "1e-400", "9" * 40, "0x10", "2026-11-23",
                     "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00",
                     "2026-11-23T08:10:00", "2026-13-45T99:99:99Z", "gid://shopify/X/",
                     "javascript:alert(1)", "HTTPS://SHOP.EXAMPLE.COM/R", "usd", "XAU", "JPY",
                     "KWD", "CLF"]),
)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**53, 2**63, 2**64, 10**20, 10**400, 99_999_999, 100_000_000]),
    st.floats(),
    st.sampled_from([float("inf"), float("nan"), 1e-400, 5e-324, 1.7976931348623157e308,
                     0.1, 0.005, 1e15, 19.99, -0.0]),
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(str),
)
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, ODD_TEXT)
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(ODD_TEXT, inner, max_size=3), max_leaves=8)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into the dicts and lists of `value`, the root first."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


def _at(record: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        record = record[step]
    return record


@st.composite
def mutated(draw: st.DrawFn, records: list[dict[str, Any]]) -> dict[str, Any]:
    """A real record with one to four fields replaced, retyped, removed or duplicated."""
    record = copy.deepcopy(draw(st.sampled_from(records)))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(record)[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _at(record, path[:-1]), path[-1]
        action = draw(st.sampled_from(["replace", "replace", "retype", "remove", "duplicate"]))
        if action == "replace":
            parent[key] = draw(JSON)
        elif action == "retype":
            parent[key] = draw(st.sampled_from([[parent[key]], {"value": parent[key]},
                                                str(parent[key]), None]))
        elif action == "remove":
            del parent[key]
        elif isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        else:
            parent[key] = [copy.deepcopy(parent[key])] * draw(st.integers(2, 3))
    return record


def shaped(value: Any) -> st.SearchStrategy[Any]:
    """JSON generated freely with the keys and nesting of `value`: any key may be missing,
    any leaf kept or any JSON value."""
    if isinstance(value, dict):
        return st.fixed_dictionaries({}, optional={k: shaped(v) for k, v in value.items()})
    if isinstance(value, list) and value:
        return st.lists(shaped(value[0]) | JSON, max_size=3)
    return st.just(value) | JSON


# The documented shapes, whose keys are the ones the normalisers read.
SHAPES = {"graphql": graphql_node(), "rest": rest_checkout(), "woocommerce": woo_order(),
          "custom": custom_cart()}


# --- the properties ---------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def _int(text: str) -> Decimal:
    value = int(text)
    assert -JS_SAFE <= value <= JS_SAFE, text
    return Decimal(value)


def _float(text: str) -> Decimal:
    exact = Decimal(text)
    assert Decimal(repr(float(text))) == exact, text  # a float reader gets these digits
    assert len(exact.as_tuple().digits) <= payload.EXACT_DIGITS, text
    return exact


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    assert len({k for k, _ in pairs}) == len(pairs), pairs
    return dict(pairs)


def strict(body: bytes) -> Any:
    """The body parsed as RFC 8259 strictly: UTF-8, no NaN or Infinity, no duplicate keys,
    integers a 64-bit (and a double) parser reads, numbers a float reader keeps exactly.
    Every number comes back as a Decimal of the digits written."""
    return json.loads(body.decode("utf-8"), parse_constant=_no_constants, parse_int=_int,
                      parse_float=_float, object_pairs_hook=_unique_keys)


def check_body(body: bytes, carts: list[Cart]) -> None:
    """The arithmetic a receiver can check, on the numbers as written."""
    parsed = strict(body)
    currency = carts[0].currency
    digits = minor_units(currency)
    entries = parsed["abandoned_carts"]
    assert [e["cart_id"] for e in entries] == [c.cart_id for c in carts]
    for entry, cart in zip(entries, carts, strict=True):
        lines = []
        for item in entry["items"]:
            assert item["line_total"] == item["unit_price"] * item["quantity"]
            assert item["unit_price"].as_tuple().exponent >= -digits
            lines.append(item["line_total"])
        if cart.stated_total is None:
            assert entry["total_value"] == sum(lines)
        assert entry["total_value"] == cart.total_value
        assert entry["total_value"].as_tuple().exponent >= -digits
    analytics = parsed["recovery_analytics"]
    total = sum(e["total_value"] for e in entries)
    assert analytics["total_value"] == total
    assert analytics["total_items"] == sum(i["quantity"] for e in entries for i in e["items"])
    assert analytics["average_cart_value"] == quantize(total / len(carts), currency)


def through_the_cycle(normalise: Any, records: list[Any]) -> None:
    """Normalise, dedupe, filter and build payloads as a cycle does, checking each step."""
    for record in records:
        try:
            cart = normalise(record)
        except MalformedRecord as exc:
            assert str(exc) and len(str(exc)) < 200  # a short reason, never the value
            continue
        again = normalise(json.loads(json.dumps(record)))  # the same record, read again
        assert again.cart_id == cart.cart_id and again.total_value == cart.total_value
        assert cart.cart_id == cart.cart_id.strip() and "\x00" not in cart.cart_id
        cart.cart_id.encode()  # valid UTF-8: PostgreSQL stores the key as written
    gathered = Gathered()
    gathered.gather(records, normalise)
    assert not [r for r in gathered.malformed if r.startswith("unexpected")], gathered.malformed
    carts = gathered.carts
    assert len({c.cart_id for c in carts}) == len(carts)
    for rules in (EVERYTHING, DEFAULT_RULES):
        reasons = {rules.drop_reason(c, NOW) for c in carts}
        assert reasons <= {None, *DROP_REASONS}
    for event in (payload.DETECTED, payload.RECOVERED):
        for currency in {c.currency for c in carts}:
            chunk = [c for c in carts if c.currency == currency]
            integration = {"id": "i-1", "platform": "custom", "mode": "live"}
            check_body(payload.build(event=event, now=NOW, agent=AGENT, company=COMPANY,
                                     integration=integration, carts=chunk), chunk)


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_the_real_records_themselves_pass(platform: str) -> None:
    normalise, records = PLATFORMS[platform]
    assert all(normalise(r) for r in records)  # the unmutated records are carts
    through_the_cycle(normalise, records)


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
@given(data=st.data())
def test_mutated_real_records(platform: str, data: st.DataObject) -> None:
    normalise, records = PLATFORMS[platform]
    batch = data.draw(st.lists(mutated(records), min_size=1, max_size=4))
    through_the_cycle(normalise, batch + data.draw(st.lists(st.sampled_from(records),
                                                            max_size=2)))


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
@given(data=st.data())
def test_freely_generated_json_in_the_platform_shape(platform: str, data: st.DataObject) -> None:
    normalise = PLATFORMS[platform][0]
    through_the_cycle(normalise, data.draw(st.lists(shaped(SHAPES[platform]) | JSON,
                                                    max_size=3)))


VERSIONS = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 5),
                              st.booleans()), min_size=1, max_size=12)


@given(versions=VERSIONS, split=st.integers(0, 12))
def test_a_cart_listed_twice_is_one_cart_its_latest_version(versions, split) -> None:
    """In one page or across pages: one cart per id, the completed version or else the
    latest activity, and on a tie the one listed later."""
    base = NOW - timedelta(hours=3)
    records = []
    for position, (cart_id, minutes, completed) in enumerate(versions):
        record = custom_cart(cart_id=cart_id,
                             abandoned_at=(base + timedelta(minutes=minutes)).isoformat())
        record["items"][0]["sku"] = f"listed-{position}"
        if completed:
            record["completed_at"] = NOW.isoformat()
        records.append(record)
    gathered = Gathered()
    gathered.gather(records[:split], custom.normalise)  # page 1
    gathered.gather(records[split:], custom.normalise)  # page 2
    assert sorted(gathered.by_id) == sorted({v[0] for v in versions})
    for cart_id, cart in gathered.by_id.items():
        mine = [(completed, minutes, position)
                for position, (i, minutes, completed) in enumerate(versions) if i == cart_id]
        completed, minutes, position = max(mine)
        assert (cart.completed_at is not None, cart.last_activity) == (
            completed, base + timedelta(minutes=minutes))
        assert cart.items[0].sku == f"listed-{position}"


CURRENCY_CODES = st.sampled_from(["USD", "JPY", "KWD", "CLF", "EUR", "BHD", "ISK", "UYW"])


@st.composite
def priced_cart(draw: st.DrawFn) -> dict[str, Any]:
    """A custom cart whose amounts span the whole range, past the limits too: prices with
    any number of digits, quantities to the maximum, a stated total or none."""
    code = draw(CURRENCY_CODES)
    digits = minor_units(code)
    price = st.decimals(min_value=0, max_value=Decimal(10) ** (11 - digits) * 2,
                        allow_nan=False, allow_infinity=False, places=draw(st.integers(0, 6)))
    lines = [{"title": "Line", "quantity": draw(st.integers(1, 10**8)),
              "unit_price": draw(st.one_of(price.map(str), price.map(float)))}
             for _ in range(draw(st.integers(1, 4)))]
    record = custom_cart(cart_id=draw(st.text("abc123", min_size=1, max_size=3)), currency=code,
                         items=lines)
    if draw(st.booleans()):
        record["total_value"] = str(draw(price))
    return record


@given(records=st.lists(priced_cart(), min_size=1, max_size=30))
def test_money_adds_up_exactly_on_the_numbers_written(records) -> None:
    """Each amount rounded once (half to even) to its currency's minor unit; what cannot be
    written exactly is malformed, the rest adds up in the body to the last digit."""
    through_the_cycle(custom.normalise, records)
    for record in records:
        try:
            cart = custom.normalise(record)
        except MalformedRecord as exc:
            assert "too large" in str(exc) or "quantity" in str(exc), exc
            continue
        for item, line in zip(cart.items, record["items"], strict=True):
            raw = line["unit_price"]
            assert item.unit_price == quantize(Decimal(raw if isinstance(raw, str)
                                                       else repr(raw)), cart.currency)
