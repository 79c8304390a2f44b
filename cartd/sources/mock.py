"""Deterministic mock stores that emit each platform's native records.

Time is cut into slots of `3600 / carts_per_hour` seconds on a fixed grid (Unix time 0),
and at most one cart is born in each slot. Everything about slot k comes from a hash of
`{integration_id}:{k}`, so a store polled again returns the same carts, with the same ids
and contents, plus the carts born since; the grid does not move when `epoch` does.
"""

from __future__ import annotations

import hashlib
import re
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import cache, lru_cache, partial
from typing import Any, NamedTuple

from faker import Faker

from cartd.config import MockConfig
from cartd.model import Cart
from cartd.sources.custom import normalise as normalise_custom
from cartd.sources.fields import Gathered
from cartd.sources.shopify import normalise_graphql
from cartd.sources.woocommerce import normalise as normalise_woocommerce

MAX_AGE = 8 * 86400  # carts idle longer than this are never generated
_IDLE = (60, 1800)  # last activity: 1 to 30 minutes after creation
_RECOVERY = (600, 43200)  # completion: 10 minutes to 12 hours after the last activity
_DISCOUNT_PERCENT = 15  # share of Shopify carts with a 10 % discount
_WORDS = struct.Struct("<16I")
_QUANTITIES = 3  # a line holds 1 to 3 units
_STATUSES = ("pending", "failed", "checkout-draft")  # of a WooCommerce order not yet placed


class _Person(NamedTuple):
    number: int
    first: str
    last: str
    email: str | None
    phone: str | None
    accepts_marketing: bool
    shopify_id: str  # gid://shopify/Customer/...
    custom_id: str  # mock_customer_...


class _Product(NamedTuple):
    index: int  # in _PRODUCTS
    product_id: int
    variant_id: int
    sku: str
    title: str
    variant_title: str | None
    cents: int
    price: str  # "19.99"
    number: float  # 19.99, as a JSON number
    # Rendered once, not per record: ids as strings and Shopify gids, and the line total
    # for each quantity (1 to _QUANTITIES) as a string and as a JSON number.
    product_key: str
    variant_key: str
    product_gid: str
    variant_gid: str
    line_prices: tuple[str, ...]
    line_numbers: tuple[float, ...]


class _Store(NamedTuple):
    seed: Any  # a blake2b hash of the integration id, copied per slot
    tag: str
    currency: str
    host: str


class _Slot(NamedTuple):
    k: int
    cart_id: str
    token: str
    created: int
    last: int
    completed: int | None  # set once the completion has happened
    person: _Person
    lines: list[tuple[_Product, int]]
    discount: bool
    status: str


def _pools(seed: int) -> tuple[tuple[_Person, ...], tuple[_Product, ...], tuple[str, ...]]:
    """Customers, products and shop names, drawn once from a seeded Faker (in this order:
    the draws of each depend on those before)."""
    fake = Faker("en_US")
    fake.seed_instance(seed)
    people = _people(fake)
    products = _products(fake)
    shops = tuple(re.sub(r"[^a-z0-9]+", "-", fake.company().lower()).strip("-") for _ in range(200))
    return people, products, shops


def _people(fake: Faker) -> tuple[_Person, ...]:
    draw = fake.random
    firsts = [fake.first_name() for _ in range(400)]
    lasts = [fake.last_name() for _ in range(400)]
    domains = ("example.com", "example.net", "example.org")
    people = []
    for number in range(5000):
        first, last = draw.choice(firsts), draw.choice(lasts)
        contact = draw.random()
        email = f"{_ascii(first)}.{_ascii(last)}{number}@{draw.choice(domains)}"
        people.append(
            _Person(
                number=number,
                first=first,
                last=last,
                email=email if contact < 0.85 else None,
                phone=f"+1555{draw.randrange(10**7):07d}" if 0.6 < contact < 0.95 else None,
                accepts_marketing=draw.random() < 0.5,
                shopify_id=f"gid://shopify/Customer/{7_000_000_000 + number}",
                custom_id=f"mock_customer_{number}",
            )
        )
    return tuple(people)


def _products(fake: Faker) -> tuple[_Product, ...]:
    draw = fake.random
    nouns = ("T-Shirt", "Hoodie", "Mug", "Backpack", "Cap", "Sneakers", "Notebook",
             "Water Bottle", "Scarf", "Lamp", "Candle", "Tote Bag", "Socks", "Jacket")
    sizes = (None, None, "S", "M", "L", "XL", "Small", "Large")
    products = []
    for number in range(300):
        cents = draw.randrange(299, 20000)
        product_id, variant_id = 8_000_000_000 + number, 45_000_000_000 + number
        quantities = range(1, _QUANTITIES + 1)
        products.append(
            _Product(
                index=number,
                product_id=product_id,
                variant_id=variant_id,
                sku=fake.bothify("??-#####").upper(),
                title=f"{_words(fake.color_name())} {draw.choice(nouns)}",
                variant_title=draw.choice(sizes),
                cents=cents,
                price=_price(cents),
                number=cents / 100,
                product_key=str(product_id),
                variant_key=str(variant_id),
                product_gid=f"gid://shopify/Product/{product_id}",
                variant_gid=f"gid://shopify/ProductVariant/{variant_id}",
                line_prices=tuple(_price(cents * q) for q in quantities),
                line_numbers=tuple(cents * q / 100 for q in quantities),
            )
        )
    return tuple(products)


def _words(camel: str) -> str:
    """`DarkSlateGray` -> `Dark Slate Gray`."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", camel)


def _ascii(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def _price(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


_PEOPLE, _PRODUCTS, _SHOPS = _pools(20261123)


@lru_cache(maxsize=4096)
def _store(integration_id: str) -> _Store:
    digest = hashlib.blake2b(integration_id.encode()).digest()
    tag = digest[:4].hex()
    currency = "USD" if digest[4] < 180 else ("EUR", "GBP")[digest[5] % 2]
    host = f"{_SHOPS[digest[6] % len(_SHOPS)]}-{tag[:4]}.example.com"
    return _Store(hashlib.blake2b(f"{integration_id}:".encode()), tag, currency, host)


def _slots(
    store: _Store, epoch: float, since: float | None, now: float, mock: MockConfig
) -> Iterator[_Slot]:
    """The slots whose cart is visible at `now` and was updated after `since`."""
    width = 3600 / mock.carts_per_hour
    oldest = max(epoch, now - MAX_AGE - _IDLE[1])
    if since is not None:
        oldest = max(oldest, since - _IDLE[1] - _RECOVERY[1])
    recovered = int(mock.recovery_rate * 2**32)
    seed, prefix, unpack = store.seed, f"mock_{store.tag}_", _WORDS.unpack
    idle_min, idle_span = _IDLE[0], _IDLE[1] - _IDLE[0] + 1
    recovery_min, recovery_span = _RECOVERY[0], _RECOVERY[1] - _RECOVERY[0] + 1
    people, products = _PEOPLE, _PRODUCTS
    too_old = now - MAX_AGE
    for k in range(int(oldest // width), int(now // width) + 1):
        hasher = seed.copy()
        hasher.update(str(k).encode())
        digest = hasher.digest()
        words = unpack(digest)
        created = int(k * width + words[0] / 2**32 * width)
        last = created + idle_min + words[1] % idle_span
        if created < epoch or last > now or last < too_old:
            continue
        completed = None
        if words[2] < recovered:
            completed = last + recovery_min + words[3] % recovery_span
            if completed > now:
                completed = None
        if since is not None and (completed or last) <= since:
            continue
        shape = words[5]
        # Positional: a named tuple is built twice as fast without keywords.
        yield _Slot(
            k,  # k
            prefix + str(k),  # cart_id
            digest[40:56].hex(),  # token
            created,  # created
            last,  # last
            completed,  # completed
            people[words[4] % len(people)],  # person
            [(products[w % len(products)], 1 + (w >> 16) % _QUANTITIES)
             for w in words[6 : 7 + shape % 4]],  # lines
            (shape >> 8) % 100 < _DISCOUNT_PERCENT,  # discount
            _STATUSES[(shape >> 16) % 3],  # status
        )


_CLOCK = tuple(f"{hour:02d}:{minute:02d}:" for hour in range(24) for minute in range(60))
_SECONDS = tuple(f"{second:02d}" for second in range(60))


@lru_cache(maxsize=16)
def _day(day: int) -> str:
    return time.strftime("%Y-%m-%dT", time.gmtime(day * 86400))


def _gmt(moment: int) -> str:
    """ISO 8601 UTC without a zone suffix, as WooCommerce's `*_gmt` dates (strftime is slower)."""
    day, second = divmod(moment, 86400)
    minute, second = divmod(second, 60)
    return _day(day) + _CLOCK[minute] + _SECONDS[second]


def _z(moment: int) -> str:
    return f"{_gmt(moment)}Z"


# The parts of records that repeat (a customer, a line) are made once and shared by the
# records that hold them: a record is read, never changed.


@cache
def _shopify_customer(number: int) -> dict[str, Any] | None:
    person = _PEOPLE[number]
    if not (person.email or person.phone):
        return None
    state = "SUBSCRIBED" if person.accepts_marketing else "NOT_SUBSCRIBED"
    return {
        "id": person.shopify_id,
        "firstName": person.first,
        "lastName": person.last,
        "defaultEmailAddress": (
            {"emailAddress": person.email, "marketingState": state} if person.email else None),
        "defaultPhoneNumber": {"phoneNumber": person.phone} if person.phone else None,
    }


@cache
def _shopify_line(index: int, quantity: int, currency: str) -> dict[str, Any]:
    product = _PRODUCTS[index]
    return {
        "title": product.title,
        "variantTitle": product.variant_title,
        "sku": product.sku,
        "quantity": quantity,
        "variant": {"id": product.variant_gid},
        "product": {"id": product.product_gid},
        "originalUnitPriceSet": {"shopMoney": {"amount": product.price, "currencyCode": currency}},
    }


def _shopify(store: _Store, slot: _Slot) -> dict[str, Any]:
    currency = store.currency
    cents = sum(product.cents * quantity for product, quantity in slot.lines)
    if slot.discount:
        cents -= cents // 10
    return {
        "id": f"gid://shopify/AbandonedCheckout/{slot.cart_id}",
        "name": f"#{slot.k}",
        "abandonedCheckoutUrl": f"https://{store.host}/checkouts/ac/{slot.token}/recover",
        "createdAt": _z(slot.created),
        "updatedAt": _z(slot.completed or slot.last),
        "completedAt": None if slot.completed is None else _z(slot.completed),
        "customer": _shopify_customer(slot.person.number),
        "totalPriceSet": {"shopMoney": {"amount": _price(cents), "currencyCode": currency}},
        "lineItems": {
            "nodes": [_shopify_line(product.index, quantity, currency)
                      for product, quantity in slot.lines]
        },
    }


@cache
def _woocommerce_billing(number: int) -> dict[str, Any]:
    person = _PEOPLE[number]
    return {
        "first_name": person.first,
        "last_name": person.last,
        "email": person.email or "",
        "phone": person.phone or "",
    }


@cache
def _woocommerce_line(position: int, index: int, quantity: int) -> dict[str, Any]:
    product = _PRODUCTS[index]
    return {
        "id": position,
        "name": product.title,
        "product_id": product.product_id,
        "variation_id": product.variant_id if product.variant_title else 0,
        "quantity": quantity,
        "subtotal": product.line_prices[quantity - 1],
        "total": product.line_prices[quantity - 1],
        "sku": product.sku,
        "price": product.number,
    }


# Mock WooCommerce stores keep consent under this order meta key (a live store names its
# key in `consent_meta_key`).
MOCK_CONSENT_KEY = "_cartd_marketing_consent"
_WOOCOMMERCE_CONSENT = {
    consent: [{"key": MOCK_CONSENT_KEY, "value": "yes" if consent else "no"}]
    for consent in (False, True)
}


def _woocommerce(store: _Store, slot: _Slot) -> dict[str, Any]:
    person = slot.person
    cents = sum(product.cents * quantity for product, quantity in slot.lines)
    paid = None if slot.completed is None else _gmt(slot.completed)
    return {
        "id": slot.cart_id,  # a string, not WooCommerce's integer, so that it starts with mock_
        "number": slot.cart_id,
        "status": slot.status if slot.completed is None else "processing",
        "currency": store.currency,
        "date_created_gmt": _gmt(slot.created),
        "date_modified_gmt": paid or _gmt(slot.last),
        "date_paid_gmt": paid,
        "date_completed_gmt": None,
        "total": _price(cents),
        "customer_id": 1000 + person.number if person.email else 0,
        "billing": _woocommerce_billing(person.number),
        "line_items": [_woocommerce_line(position, product.index, quantity)
                       for position, (product, quantity) in enumerate(slot.lines, 1)],
        "meta_data": _WOOCOMMERCE_CONSENT[person.accepts_marketing],
        "payment_url": (
            f"https://{store.host}/checkout/order-pay/{slot.k}/"
            f"?pay_for_order=true&key=wc_order_{slot.token[:13]}"
        ),
    }


@cache
def _custom_customer(number: int) -> dict[str, Any]:
    person = _PEOPLE[number]
    return {
        "id": person.custom_id,
        "email": person.email,
        "first_name": person.first,
        "last_name": person.last,
        "phone": person.phone,
        "accepts_marketing": person.accepts_marketing,
    }


@cache
def _custom_item(index: int, quantity: int) -> dict[str, Any]:
    product = _PRODUCTS[index]
    return {
        "product_id": product.product_key,
        "variant_id": product.variant_key,
        "sku": product.sku,
        "title": product.title,
        "quantity": quantity,
        "unit_price": product.number,
        "line_total": product.line_numbers[quantity - 1],
    }


def _custom(store: _Store, slot: _Slot) -> dict[str, Any]:
    cents = sum(product.cents * quantity for product, quantity in slot.lines)
    record: dict[str, Any] = {
        "cart_id": slot.cart_id,
        "customer": _custom_customer(slot.person.number),
        "items": [_custom_item(product.index, quantity) for product, quantity in slot.lines],
        "currency": store.currency,
        "total_value": cents / 100,
        "created_at": _z(slot.created),
        "abandoned_at": _z(slot.last),
        "recovery_url": f"https://{store.host}/cart/recover/{slot.token}",
    }
    if slot.completed is not None:
        record["completed_at"] = _z(slot.completed)
        record["order_id"] = f"mock_order_{slot.k}"
    return record


_Platform = tuple[Callable[[_Store, _Slot], dict[str, Any]], Callable[[Any], Cart]]
_PLATFORMS: dict[str, _Platform] = {
    "shopify": (_shopify, normalise_graphql),
    "woocommerce": (_woocommerce, partial(normalise_woocommerce, consent_key=MOCK_CONSENT_KEY)),
    "custom": (_custom, normalise_custom),
}


def _platform(platform: str) -> _Platform:
    """The record renderer and normaliser of a platform."""
    if platform not in _PLATFORMS:
        raise ValueError(f"no mock store for platform {platform!r}")
    return _PLATFORMS[platform]


def _records(
    render: Callable[[_Store, _Slot], dict[str, Any]],
    integration_id: str,
    epoch: datetime,
    since: datetime | None,
    now: datetime,
    mock: MockConfig,
) -> Iterator[dict[str, Any]]:
    store = _store(integration_id)
    moment = None if since is None else since.timestamp()
    for slot in _slots(store, epoch.timestamp(), moment, now.timestamp(), mock):
        yield render(store, slot)


def mock_records(
    platform: str,
    integration_id: str,
    epoch: datetime,
    since: datetime | None,
    now: datetime,
    mock: MockConfig,
) -> list[dict[str, Any]]:
    """The store's native records visible at `now` and updated after `since` (aware datetimes).

    `epoch` is when the store opened: no cart is older. Carts idle for more than 8 days
    are left out.
    """
    return list(_records(_platform(platform)[0], integration_id, epoch, since, now, mock))


def mock_carts(
    platform: str,
    integration_id: str,
    epoch: datetime,
    since: datetime | None,
    now: datetime,
    mock: MockConfig,
) -> tuple[list[Cart], Counter[str]]:
    """`mock_records` through the platform's normaliser: the carts, and the malformed
    records by reason."""
    render, normalise = _platform(platform)
    gathered = Gathered()
    gathered.gather(_records(render, integration_id, epoch, since, now, mock), normalise)
    return gathered.carts, gathered.malformed
