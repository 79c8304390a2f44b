"""What an agent asks of its carts and payloads: its filters and destination (`Rules`,
the config overridden by `company_agents.settings`, README "The database") and the
`agent_info` and `company` objects of its payloads (`agent_card`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from cartd.config import Config, parse_duration
from cartd.db.agents import AgentWork
from cartd.model import MAX_TEXT, MAX_URL, Cart, clean

MAX_ABANDONED_AFTER = 3650 * 86400.0  # seconds; an agent's settings.abandoned_after


@dataclass(frozen=True, slots=True)
class Rules:
    """The cart filters and destination of one agent (config overridden by its settings)."""

    abandoned_after: timedelta
    max_age: timedelta
    min_value: Decimal
    require_contact: bool
    require_marketing_consent: bool
    url: str | None
    url_error: str | None

    def drop_reason(self, cart: Cart, now: datetime) -> str | None:
        """Why the cart is not an abandoned one to deliver (README "How it works"), or None
        when it is."""
        if cart.completed_at is not None:
            return "completed"
        idle = now - cart.last_activity
        if idle < self.abandoned_after:
            return "too recent"
        if idle > self.max_age:
            return "too old"
        if cart.total_value < self.min_value:
            return "too cheap"
        if self.require_contact and not cart.has_contact:
            return "no contact"
        if self.require_marketing_consent and not cart.customer.accepts_marketing:
            return "no consent"
        return None


def _abandoned_after(settings: dict[str, Any], config: Config) -> float:
    try:
        seconds = parse_duration(settings.get("abandoned_after", config.carts.abandoned_after))
        if not 0 <= seconds <= MAX_ABANDONED_AFTER:
            raise ValueError
    except (ArithmeticError, ValueError):
        raise ValueError("settings.abandoned_after must be a duration from 0 to 3650d") from None
    return seconds


def _min_value(settings: dict[str, Any], config: Config) -> Decimal:
    try:
        min_value = Decimal(str(settings.get("min_value", config.carts.min_value)))
        if not min_value.is_finite() or min_value < 0:
            raise ValueError
    except (ArithmeticError, ValueError):
        raise ValueError("settings.min_value must be a number >= 0") from None
    return min_value


def override_url_error(url: Any, config: Config) -> str | None:
    """Why `settings.webhook_url` cannot be used, or None when it can (checked when its
    deliveries are recorded and again before each attempt)."""
    host = _host(url)
    if not host or urlsplit(url).scheme not in ("http", "https"):
        return "settings.webhook_url is not an http(s) URL"
    if host not in config.webhook.allowed_override_hosts:
        return f"settings.webhook_url host {host} is not in webhook.allowed_override_hosts"
    return None


def agent_rules(settings: Any, config: Config) -> Rules:
    """Apply an agent's `settings` overrides; raises ValueError naming a bad one."""
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise ValueError("settings must be a JSON object")
    abandoned_after, min_value = _abandoned_after(settings, config), _min_value(settings, config)
    consent = settings.get("require_marketing_consent", config.carts.require_marketing_consent)
    if not isinstance(consent, bool):
        raise ValueError("settings.require_marketing_consent must be true or false")
    url = settings.get("webhook_url")
    return Rules(
        abandoned_after=timedelta(seconds=abandoned_after),
        max_age=timedelta(seconds=config.carts.max_age),
        min_value=min_value,
        require_contact=config.carts.require_contact,
        require_marketing_consent=consent,
        url=url if isinstance(url, str) else None,
        url_error=None if url is None else override_url_error(url, config),
    )


def _host(url: Any) -> str | None:
    """The host of an http(s) URL of at most MAX_URL characters, else None."""
    if not isinstance(url, str) or len(url) > MAX_URL:
        return None
    try:
        return urlsplit(url).hostname
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        return None


class AgentCard(NamedTuple):
    """The `agent_info` and `company` objects of an agent's payloads."""

    agent: dict[str, Any]
    company: dict[str, Any]


def _app_text(value: Any, what: str, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} is not text")
    return clean(value, what, limit)


def agent_card(agent: AgentWork) -> AgentCard:
    """The agent's payload objects from its application rows; ValueError naming a field
    that a payload cannot carry (not text, too long)."""
    company = agent.company
    name = _app_text(company["name"], "company name")
    return AgentCard(
        {"id": str(agent.id), "name": _app_text(agent.name, "agent name"), "company": name,
         "company_id": company["id"], "template_slug": agent.template_slug},
        {"id": company["id"], "name": name,
         "website": _app_text(company["website"], "company website", MAX_URL),
         "email": _app_text(company["email"], "company email"),
         "phone": _app_text(company["phone"], "company phone")},
    )
