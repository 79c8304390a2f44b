"""The cart model: the platform-neutral cart every source is normalised into and every
payload is built from, with its money rules (minor units, rounding), timestamps and the
bounds of what a record may hold (README "Reliability")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, NamedTuple

# ISO 4217 (the list of current codes, with a few recently withdrawn ones that stores may
# still send): digits of the minor unit. Codes without a minor unit (XAU, XDR, XXX, ...)
# are not money a cart is priced in.
_TWO_DIGITS = """
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN
BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP
GBP GEL GHS GIP GMD GTQ GYD HKD HNL HRK HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT
LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO
NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS
SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD
XCG YER ZAR ZMW ZWG ZWL
"""
_OTHER_DIGITS = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF",
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
}
_MINOR_UNITS = dict.fromkeys(_TWO_DIGITS.split(), 2) | {
    code: digits for digits, codes in _OTHER_DIGITS.items() for code in codes.split()}
CURRENCIES = frozenset(_MINOR_UNITS)

# Every amount is rounded once, where it enters, to its currency's minor unit with this mode.
ROUNDING = ROUND_HALF_EVEN
# A cart's amounts (prices, line totals, its total) stay below 10**(CART_DIGITS - minor
# unit digits): USD 999,999,999.99. Then the total of a payload of up to 10,000 carts
# (`webhook.max_carts_per_payload`) has at most 15 significant digits, which a JSON number
# read as a 64-bit float keeps exactly (see `payload.py`).
CART_DIGITS = 11
MAX_QUANTITY = 99_999_999  # units on one line
MAX_LINES = 1000  # lines in one cart
MAX_ID = 255  # characters of an id
MAX_TEXT = 1000  # characters of a name, title, email, phone or SKU
MAX_URL = 4096  # characters of a recovery URL
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)


class MalformedRecord(ValueError):
    """A store record that cannot be turned into a cart exactly; it is skipped and counted.
    The message names the field and the rule, never the value (it is a counting key)."""


_EXPONENTS = {code: Decimal(1).scaleb(-digits) for code, digits in _MINOR_UNITS.items()}
_LIMITS = {code: Decimal(10) ** (CART_DIGITS - digits) for code, digits in _MINOR_UNITS.items()}
_ZERO = Decimal(0)


def clean(value: str, what: str, limit: int) -> str:
    """`value` when it is at most `limit` characters of valid Unicode without NUL: what
    the payload's JSON, the receiver and PostgreSQL all take as it is."""
    if len(value) > limit:
        raise MalformedRecord(f"{what} is longer than {limit} characters")
    if "\x00" in value:
        raise MalformedRecord(f"{what} contains a NUL character")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate, as JSON's \ud800 decodes
            raise MalformedRecord(f"{what} is not valid Unicode") from None
    return value


def minor_units(currency: str) -> int:
    """Digits after the decimal point of the currency's amounts (2 for an unknown code)."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def quantize(amount: Decimal, currency: str) -> Decimal:
    """`amount` (>= 0 and below 10**CART_DIGITS) rounded to the minor unit of `currency`,
    an upper-case ISO 4217 code as `Cart.currency` is, with ROUNDING."""
    return amount.quantize(_EXPONENTS[currency], ROUNDING)


def amount(value: Any, what: str) -> Decimal:
    """A Decimal >= 0 and below 10**CART_DIGITS from a platform's money string or number,
    exactly as written (never through a float sum)."""
    if type(value) is str:
        if not value.isascii() or "_" in value:  # Decimal() reads "1_0" and other digits
            raise MalformedRecord(f"{what} is not a number")
        parsed: Any = value
    elif type(value) is float:
        parsed = str(value)  # the shortest repr: the digits the JSON had
    elif isinstance(value, int | Decimal) and not isinstance(value, bool):
        parsed = value
    else:
        raise MalformedRecord(f"{what} is missing or not a number")
    try:
        result = Decimal(parsed)
    except (InvalidOperation, ValueError):
        raise MalformedRecord(f"{what} is not a number") from None
    if result.is_finite() and not result.is_signed() and result.adjusted() < CART_DIGITS:
        return result
    if not result.is_finite() or result < 0:
        raise MalformedRecord(f"{what} must be a finite number >= 0")
    if not result:
        return _ZERO  # -0 is 0
    raise MalformedRecord(f"{what} is too large")


# Prices repeat across carts (a store sells the same products): the rounded amount of a
# price float or short string is looked up, not parsed again. Bounded: emptied when full.
_PRICES: dict[tuple[Any, str], Decimal] = {}
_PRICES_HELD = 8192
_PRICE_CHARS = 40  # longer strings are parsed every time, never held


def money(value: Any, what: str, currency: str) -> Decimal:
    """`amount(value)` rounded once to the minor unit of `currency`."""
    kind = type(value)
    if kind is not float and (kind is not str or len(value) > _PRICE_CHARS):
        return amount(value, what).quantize(_EXPONENTS[currency], ROUNDING)
    key = (value, currency)
    price = _PRICES.get(key)
    if price is None:
        price = amount(value, what).quantize(_EXPONENTS[currency], ROUNDING)
        if len(_PRICES) >= _PRICES_HELD:
            _PRICES.clear()
        _PRICES[key] = price
    return price


def timestamp(value: Any, what: str) -> datetime:
    """An aware UTC datetime from 1970 to 9998 from an ISO 8601 string; one without an
    offset is UTC (WooCommerce's GMT dates have no `Z`)."""
    if not isinstance(value, str) or not value:
        raise MalformedRecord(f"{what} is missing")
    try:
        if len(value) > 64:
            raise ValueError
        parsed = datetime.fromisoformat(value)  # takes `Z` since Python 3.11
    except ValueError:
        raise MalformedRecord(f"{what} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = datetime.combine(parsed, parsed.time(), UTC)  # 4x faster than replace()
    else:
        try:
            parsed = parsed.astimezone(UTC)
        except OverflowError:
            raise MalformedRecord(f"{what} is out of range") from None
    if not _EARLIEST <= parsed < _LATEST:
        raise MalformedRecord(f"{what} is out of range")
    return parsed


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with `Z`, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Customers and items are immutable records, made a few times per cart: named tuples,
# which are built several times faster than frozen dataclasses.
class Customer(NamedTuple):
    id: str | None
    email: str | None
    first_name: str | None
    last_name: str | None
    phone: str | None
    accepts_marketing: bool


class Item(NamedTuple):
    product_id: str | None
    variant_id: str | None
    sku: str | None
    title: str
    quantity: int
    unit_price: Decimal  # already rounded to the cart currency's minor unit


@dataclass(slots=True)
class Cart:
    """One cart as cartd sees it. `last_activity` is when it was last touched; times are
    aware UTC; unit prices and `stated_total` are rounded to the currency's minor unit.
    A normaliser builds it and nothing changes it after (it is not frozen only because
    frozen dataclasses are built three times slower). Building it checks that its amounts
    can be written exactly (MalformedRecord otherwise)."""

    cart_id: str
    customer: Customer
    items: tuple[Item, ...]
    currency: str
    created_at: datetime
    last_activity: datetime
    recovery_url: str | None = None
    stated_total: Decimal | None = None
    completed_at: datetime | None = None
    order_id: str | None = None
    total_value: Decimal = field(default=_ZERO, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lines = _ZERO
        for item in self.items:
            lines += item.unit_price * item.quantity  # exact: both are bounded
        limit = _LIMITS[self.currency]
        stated = self.stated_total
        if lines >= limit or (stated is not None and stated >= limit):
            raise MalformedRecord("amounts are too large to be written exactly")
        # The platform's stated total when it gives one, else the sum of line totals.
        self.total_value = lines if stated is None else stated

    @property
    def item_count(self) -> int:
        return sum(i.quantity for i in self.items)

    @property
    def has_contact(self) -> bool:
        return bool(self.customer.email or self.customer.phone)

    def newer_than(self, other: Cart) -> bool:
        """Whether this version of a cart replaces `other`, one listed before it: a
        completed version wins (an order stays placed), then the later last activity; on
        a tie, the one listed later."""
        if (self.completed_at is None) != (other.completed_at is None):
            return self.completed_at is not None
        return self.last_activity >= other.last_activity

    def to_payload(self, number: Callable[[Decimal], Any] = Decimal) -> dict[str, Any]:
        """The cart as the README's payload shows it; money is Decimal, or what `number`
        makes of it, and times are datetimes (`payload.dumps` writes them as ISO 8601 with
        `Z`). `line_total` is `unit_price × quantity` exactly, as written."""
        customer = self.customer
        return {
            "cart_id": self.cart_id,
            "customer": {
                "id": customer.id,
                "email": customer.email,
                "first_name": customer.first_name,
                "last_name": customer.last_name,
                "phone": customer.phone,
                "accepts_marketing": customer.accepts_marketing,
            },
            "items": [
                {
                    "product_id": i.product_id,
                    "variant_id": i.variant_id,
                    "sku": i.sku,
                    "title": i.title,
                    "quantity": i.quantity,
                    "unit_price": number(i.unit_price),
                    "line_total": number(i.unit_price * i.quantity),
                }
                for i in self.items
            ],
            "currency": self.currency,
            "total_value": number(self.total_value),
            "created_at": self.created_at,
            "abandoned_at": self.last_activity,
            "recovery_url": self.recovery_url,
        }
