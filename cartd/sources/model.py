"""The platform-neutral cart every source is normalised into, and money helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, NamedTuple

# ISO 4217 currencies whose minor unit is not 2 digits.
_MINOR_UNITS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0,
    "XPF": 0, "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}


class IntegrationError(Exception):
    """One integration failed; the rest of the cycle goes on. Never carries a secret."""


class MalformedRecord(ValueError):
    """A store record that cannot be turned into a cart; it is skipped and counted."""


_EXPONENTS = {code: Decimal(1).scaleb(-digits) for code, digits in _MINOR_UNITS.items()}
_CENTS = Decimal("0.01")
_ZERO = Decimal(0)


def minor_units(currency: str) -> int:
    """Digits after the decimal point of the currency's amounts."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def quantize(amount: Decimal, currency: str) -> Decimal:
    """Round to the minor unit of `currency`, an upper-case code as `Cart.currency` is
    (banker's rounding, as accountants do)."""
    return amount.quantize(_EXPONENTS.get(currency, _CENTS), rounding=ROUND_HALF_EVEN)


def money(value: Any, what: str) -> Decimal:
    """A non-negative Decimal from a platform's money string or number, never via float sums."""
    if isinstance(value, bool) or value is None:
        raise MalformedRecord(f"{what} is missing or not a number")
    try:
        amount = value if isinstance(value, Decimal) else Decimal(
            value if type(value) is str else str(value))
    except InvalidOperation:
        raise MalformedRecord(f"{what} is not a number: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise MalformedRecord(f"{what} must be a finite number >= 0: {value!r}")
    return amount


def timestamp(value: Any, what: str, *, naive_is_utc: bool = True) -> datetime:
    """An aware UTC datetime from an ISO 8601 string (WooCommerce's GMT dates have no `Z`)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)  # takes `Z` since Python 3.11
        except ValueError:
            raise MalformedRecord(f"{what} is not an ISO 8601 time: {value!r}") from None
    else:
        raise MalformedRecord(f"{what} is missing")
    if parsed.tzinfo is None:
        if not naive_is_utc:
            raise MalformedRecord(f"{what} has no time zone: {value!r}")
        return datetime.combine(parsed, parsed.time(), UTC)  # 4x faster than replace()
    return parsed.astimezone(UTC)


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
    unit_price: Decimal


@dataclass(slots=True)
class Cart:
    """One cart as cartd sees it. `last_activity` is when it was last touched; times are
    aware UTC. A normaliser builds it and nothing changes it after (it is not frozen only
    because frozen dataclasses are built three times slower)."""

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
    _total: Decimal | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def total_value(self) -> Decimal:
        """The platform's stated total when it gives one, else the sum of line totals."""
        total = self._total
        if total is None:
            if self.stated_total is not None:
                total = quantize(self.stated_total, self.currency)
            else:
                total = sum(map(self.line_total, self.items), _ZERO)
            self._total = total
        return total

    def line_total(self, item: Item) -> Decimal:
        return quantize(item.unit_price * item.quantity, self.currency)

    @property
    def item_count(self) -> int:
        return sum(i.quantity for i in self.items)

    @property
    def has_contact(self) -> bool:
        return bool(self.customer.email or self.customer.phone)

    def to_payload(self, number: Callable[[Decimal], Any] = Decimal) -> dict[str, Any]:
        """The cart as SPEC §2 shows it; money is Decimal, or what `number` makes of it, and
        times are datetimes (`payload.dumps` writes them as ISO 8601 with `Z`)."""
        exponent = _EXPONENTS.get(self.currency, _CENTS)
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
                    "unit_price": number(i.unit_price.quantize(exponent, ROUND_HALF_EVEN)),
                    "line_total": number(
                        (i.unit_price * i.quantity).quantize(exponent, ROUND_HALF_EVEN)),
                }
                for i in self.items
            ],
            "currency": self.currency,
            "total_value": number(self.total_value),
            "created_at": self.created_at,
            "abandoned_at": self.last_activity,
            "recovery_url": self.recovery_url,
        }
