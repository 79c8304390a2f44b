"""A Shopify store's Admin API: where it is, how cartd signs in, how fast it may ask.

Sign-in is a fixed `access_token` (an app made in the admin, or an offline token of an
installed app) or `client_id` + `client_secret`: the client credentials grant gives a
token that lives `expires_in` seconds (24 h). Tokens are kept in this process's memory
only, asked for again shortly before they expire and once after a 401.

GraphQL requests are paced by the store's leaky bucket (`extensions.cost.throttleStatus`):
one bucket per shop, shared by every integration of that shop, so a request is sent only
when the bucket holds its requested cost. README "Connecting stores" has the figures.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog

from cartd.config import Config
from cartd.sources.errors import IntegrationError
from cartd.sources.http import (
    DEFAULT_RETRY_AFTER,
    Budget,
    Reply,
    StatusError,
    request,
    retry_after,
)
from cartd.sources.read import base_url, option

log = structlog.get_logger("cartd.sources")

_HOST = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?$", re.IGNORECASE)
# A token is asked for again this long before it expires: a tenth of its life, at most 5 min.
RENEW_SHARE, RENEW_MAX_SECONDS = 0.1, 300.0
DEFAULT_TOKEN_SECONDS = 3600.0  # when a grant states no `expires_in`


@dataclass
class _Token:
    value: str
    renew_at: float  # time.monotonic()


@dataclass
class _Bucket:
    """What cartd last heard of a shop's leaky bucket, and the turn of its requests."""

    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    available: float | None = None
    maximum: float = 0.0
    rate: float = 0.0
    at: float = 0.0  # time.monotonic() of the reading

    def wait_for(self, cost: float) -> float:
        """Seconds until the bucket holds `cost` points (0 when unknown)."""
        if self.available is None or self.rate <= 0:
            return 0.0
        held = min(self.maximum, self.available + self.rate * (time.monotonic() - self.at))
        return max(0.0, (min(cost, self.maximum) - held) / self.rate)

    def hear(self, body: Any) -> None:
        """Take `extensions.cost.throttleStatus` of a reply, when it has one."""
        status = _throttle_status(body)
        if status is not None:
            self.maximum, self.available, self.rate = status
            self.at = time.monotonic()


_tokens: dict[tuple[str, str], _Token] = {}
_grants: dict[tuple[str, str], asyncio.Lock] = {}
_buckets: dict[str, _Bucket] = {}


def forget_all() -> None:
    """Drop every token and bucket reading (at shutdown, with the HTTP session)."""
    _tokens.clear()
    _grants.clear()
    _buckets.clear()


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _cost(body: Any) -> dict[str, Any]:
    extensions = body.get("extensions") if isinstance(body, dict) else None
    cost = extensions.get("cost") if isinstance(extensions, dict) else None
    return cost if isinstance(cost, dict) else {}


def _throttle_status(body: Any) -> tuple[float, float, float] | None:
    """(maximumAvailable, currentlyAvailable, restoreRate) of a reply, if it has them."""
    status = _cost(body).get("throttleStatus")
    if not isinstance(status, dict):
        return None
    numbers = tuple(_number(status.get(k))
                    for k in ("maximumAvailable", "currentlyAvailable", "restoreRate"))
    if any(n is None for n in numbers):
        return None
    return numbers  # type: ignore[return-value]


def error_extensions(errors: Any, code: str) -> dict[str, Any] | None:
    """The `extensions` of the first GraphQL error with that `extensions.code`."""
    for error in errors if isinstance(errors, list) else []:
        extensions = error.get("extensions") if isinstance(error, dict) else None
        if isinstance(extensions, dict) and extensions.get("code") == code:
            return extensions
    return None


def _restore_wait(body: Any) -> float:
    """Seconds until the bucket holds the refused query's cost again."""
    cost, status = _cost(body), _throttle_status(body)
    needed = _number(cost.get("requestedQueryCost"))
    if status is None or needed is None or status[2] <= 0:
        return 0.0
    return max(0.0, (needed - status[1]) / status[2])


class Admin:
    """One integration's way into its store's Admin API."""

    def __init__(self, settings: dict[str, Any], config: Config) -> None:
        version = option(settings, "api_version", config.platforms.shopify.api_version)
        if "base_url" in settings:
            base = base_url(settings)
        else:
            domain = option(settings, "shop_domain")
            if not _HOST.match(domain):
                raise IntegrationError(
                    "config.shop_domain must be a host name like acme.myshopify.com")
            base = f"https://{domain}"
        self.base = base
        self.root = f"{base}/admin/api/{version}"
        self.host = urlsplit(base).hostname or base
        if settings.get("client_id") is not None or settings.get("client_secret") is not None:
            self.client: tuple[str, str] | None = (
                option(settings, "client_id"), option(settings, "client_secret"))
            self.token = ""  # granted when needed
        else:
            self.client, self.token = None, option(settings, "access_token")

    def secrets(self) -> tuple[str, ...]:
        """What must never be shown: the token in use and the client credentials."""
        return (self.token, *(self.client or ()))

    async def graphql(self, query: str, variables: dict[str, Any], cost: int,
                      budget: Budget) -> dict[str, Any]:
        """The body of one GraphQL request whose requested cost is `cost`, sent when the
        shop's bucket can pay for it; THROTTLED answers are waited out."""
        bucket = _buckets.setdefault(self.base, _Bucket())

        def throttled(reply: Reply) -> float | None:
            bucket.hear(reply.body)
            body = reply.body if isinstance(reply.body, dict) else {}
            if error_extensions(body.get("errors"), "THROTTLED") is None:
                return retry_after(reply.headers) if reply.status == 429 else None
            if "Retry-After" in reply.headers:
                return retry_after(reply.headers)
            return _restore_wait(body) or DEFAULT_RETRY_AFTER

        async with bucket.turn:
            wait = bucket.wait_for(cost)
            if wait > 0:
                budget.check_wait(wait, f"pacing requests to {self.host}")
                await asyncio.sleep(wait)
            reply = await self.send("POST", f"{self.root}/graphql.json", budget,
                                    json_body={"query": query, "variables": variables},
                                    throttle=throttled)
        return reply.body if isinstance(reply.body, dict) else {}

    async def send(self, method: str, url: str, budget: Budget, **options: Any) -> Reply:
        """One request with the store's token; a 401 to a granted token gets a new one once."""
        await self._sign_in(budget)
        try:
            return await request(method, url, secrets=self.secrets(), budget=budget,
                                 headers={"X-Shopify-Access-Token": self.token}, **options)
        except StatusError as exc:
            if exc.status != 401 or self.client is None:
                raise
        key = (self.base, self.client[0])
        if (held := _tokens.get(key)) is not None and held.value == self.token:
            del _tokens[key]  # unless another request already replaced it
        await self._sign_in(budget)
        return await request(method, url, secrets=self.secrets(), budget=budget,
                             headers={"X-Shopify-Access-Token": self.token}, **options)

    async def _sign_in(self, budget: Budget) -> None:
        """`self.token`: a granted one that is not about to expire (a fixed one stays)."""
        if self.client is None:
            return
        key = (self.base, self.client[0])
        async with _grants.setdefault(key, asyncio.Lock()):
            held = _tokens.get(key)
            if held is None or time.monotonic() >= held.renew_at:
                held = _tokens[key] = await self._grant(budget)
        self.token = held.value

    async def _grant(self, budget: Budget) -> _Token:
        client_id, secret = self.client or ("", "")
        try:
            reply = await request(
                "POST", f"{self.base}/admin/oauth/access_token", secrets=(secret,),
                budget=budget, form={"grant_type": "client_credentials",
                                     "client_id": client_id, "client_secret": secret})
        except IntegrationError as exc:
            raise IntegrationError(f"client credentials grant failed: {exc}") from None
        body = reply.body if isinstance(reply.body, dict) else {}
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise IntegrationError(f"malformed response: no access_token from {self.host}")
        seconds = _number(body.get("expires_in"))
        lifetime = seconds if seconds is not None and seconds > 0 else DEFAULT_TOKEN_SECONDS
        log.info("shopify_token_granted", host=self.host, expires_in=lifetime)
        renew_after = lifetime - min(RENEW_MAX_SECONDS, lifetime * RENEW_SHARE)
        return _Token(token, time.monotonic() + renew_after)
