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


def minor_units(currency: str) -> int:
    """Digits after the decimal point of the currency's amounts."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def quantize(amount: Decimal, currency: str) -> Decimal:
    """Round to the currency's minor unit (banker's rounding, as accountants do)."""
    return amount.quantize(_EXPONENTS.get(currency.upper(), _CENTS), rounding=ROUND_HALF_EVEN)


def money(value: Any, what: str) -> Decimal:
    """A non-negative Decimal from a platform's money string or number, never via float sums."""
    if isinstance(value, bool) or value is None:
        raise MalformedRecord(f"{what} is missing or not a number")
    try:
        amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
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
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise MalformedRecord(f"{what} is not an ISO 8601 time: {value!r}") from None
    else:
        raise MalformedRecord(f"{what} is missing")
    if parsed.tzinfo is None:
        if not naive_is_utc:
            raise MalformedRecord(f"{what} has no time zone: {value!r}")
        parsed = parsed.replace(tzinfo=UTC)
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


@dataclass(frozen=True, slots=True)
class Cart:
    """One cart as cartd sees it. `last_activity` is when it was last touched."""

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
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def total_value(self) -> Decimal:
        """The platform's stated total when it gives one, else the sum of line totals."""
        if self.stated_total is not None:
            return quantize(self.stated_total, self.currency)
        return sum((self.line_total(i) for i in self.items), Decimal(0))

    def line_total(self, item: Item) -> Decimal:
        return quantize(item.unit_price * item.quantity, self.currency)

    @property
    def item_count(self) -> int:
        return sum(i.quantity for i in self.items)

    @property
    def has_contact(self) -> bool:
        return bool(self.customer.email or self.customer.phone)

    def to_payload(self, number: Callable[[Decimal], Any] = Decimal) -> dict[str, Any]:
        """The cart as SPEC §2 shows it; money is Decimal, or what `number` makes of it."""
        currency = self.currency
        items = []
        lines = Decimal(0)
        for i in self.items:
            line_total = quantize(i.unit_price * i.quantity, currency)
            lines += line_total
            items.append({
                "product_id": i.product_id,
                "variant_id": i.variant_id,
                "sku": i.sku,
                "title": i.title,
                "quantity": i.quantity,
                "unit_price": number(quantize(i.unit_price, currency)),
                "line_total": number(line_total),
            })
        customer = self.customer
        total = lines if self.stated_total is None else quantize(self.stated_total, currency)
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
            "items": items,
            "currency": currency,
            "total_value": number(total),
            "created_at": iso(self.created_at),
            "abandoned_at": iso(self.last_activity),
            "recovery_url": self.recovery_url,
        }
