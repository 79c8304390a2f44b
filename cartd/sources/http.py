"""The HTTP client of the live connectors: one shared session and the safety rules.

Every request goes through `request`: `https` only (plain `http` to loopback only), no
redirects, a total timeout, a cap on the response size, bounded waits on rate limits,
and errors that name the host and the reason but never a secret.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from cartd import __version__
from cartd.sources.errors import IntegrationError

TIMEOUT_SECONDS = 30.0  # per request, connection to last byte
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_REQUESTS = 200  # per integration per cycle
MAX_WAIT_SECONDS = 30.0  # the longest rate-limit wait honoured; longer is an error
STALL_SECONDS = 2 * MAX_WAIT_SECONDS + TIMEOUT_SECONDS  # past its deadline, a read with no progress
MAX_RETRIES = 4  # rate-limited retries of one request
DEFAULT_RETRY_AFTER = 2.0

_CHUNK = 64 * 1024
_SECRET_PARAMS = re.compile(
    r"((?:consumer_key|consumer_secret|access_token|oauth_signature|ck|cs|key|token)=)[^&#\s]+",
    re.IGNORECASE,
)

_REASONS = {
    401: "unauthorized, check the credentials",
    403: "forbidden, check the credentials' permissions",
    404: "not found, check the URL",
}

_session: tuple[aiohttp.ClientSession, asyncio.AbstractEventLoop] | None = None


class StatusError(IntegrationError):
    """The store answered with an HTTP error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class OutOfBudget(IntegrationError):
    """A read's requests or time for this cycle ran out; what it read so far stands."""


class Budget:
    """The requests and seconds one read may spend in this cycle (README "Connecting
    stores": a store is read in slices).

    Until the read has made progress (`progressed`: a record read completely), the budget
    does not stop it, so that every cycle gets at least one record further whatever the
    store's rate limit; each wait stays bounded by MAX_WAIT_SECONDS. A read that makes no
    progress within twice its requests, or STALL_SECONDS past its deadline, fails: the
    store's pages are empty, endless or too slow.
    """

    def __init__(self, seconds: float, requests: int = MAX_REQUESTS) -> None:
        self.deadline = time.monotonic() + seconds
        self.requests = requests
        self.limit = requests
        self.progressed = False

    def spend_request(self) -> None:
        """Count one request; OutOfBudget when the requests or the time are spent."""
        past_seconds = time.monotonic() - self.deadline
        if self.progressed:
            if self.requests <= 0:
                raise OutOfBudget("the cycle's request budget is spent")
            if past_seconds > 0:
                raise OutOfBudget("the cycle's time budget is spent")
        elif self.requests <= -self.limit or past_seconds > STALL_SECONDS:
            raise IntegrationError(
                "no record read completely within the cycle's budget: the store's pages "
                "are empty, endless or too slow")
        self.requests -= 1

    def check_wait(self, seconds: float, why: str) -> None:
        """OutOfBudget when waiting `seconds` would end past the deadline, or is longer
        than MAX_WAIT_SECONDS."""
        late = time.monotonic() + seconds > self.deadline and self.progressed
        if late or seconds > MAX_WAIT_SECONDS:
            raise OutOfBudget(f"{why}: a {seconds:.3g} s wait would pass the cycle's time budget")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: Any  # the parsed JSON, or None when the body was not JSON


# Decides whether a reply is a rate limit: the seconds to wait before retrying, else None.
Throttle = Callable[[Reply], float | None]


def session() -> aiohttp.ClientSession:
    """The shared session of the running event loop, created on first use."""
    global _session
    loop = asyncio.get_running_loop()
    if _session is None or _session[0].closed or _session[1] is not loop:
        client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
            headers={"User-Agent": f"cartd/{__version__}", "Accept": "application/json"},
            raise_for_status=False,
        )
        _session = (client, loop)
    return _session[0]


async def close() -> None:
    """Close the shared session (at daemon shutdown); the next fetch opens a new one."""
    global _session
    if _session is not None:
        client, _session = _session[0], None
        await client.close()


def check_url(url: str) -> str:
    """`url` when it is https, or http to a loopback host; else IntegrationError."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise IntegrationError("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        shown = f"{parts.scheme[:10] or 'no scheme'}, {'host ' + host[:80] if host else 'no host'}"
        raise IntegrationError(f"not an http(s) URL ({shown})")
    if parts.scheme == "http" and not is_loopback(host):
        raise IntegrationError(f"plain http is refused for {host}: use https")
    return url


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` without the given secrets and without credential-looking query parameters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SECRET_PARAMS.sub(r"\1***", text)


def retry_after(headers: Mapping[str, str], default: float = DEFAULT_RETRY_AFTER) -> float:
    """Seconds from `Retry-After` (a number or an HTTP date), else `default`."""
    value = headers.get("Retry-After")
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def http_429(reply: Reply) -> float | None:
    """The default throttle: a 429 waits for its `Retry-After`."""
    return retry_after(reply.headers) if reply.status == 429 else None


async def request(
    method: str,
    url: str,
    *,
    secrets: Iterable[str] = (),
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
    form: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    throttle: Throttle = http_429,
    budget: Budget | None = None,
) -> Reply:
    """One JSON request, retried while `throttle` asks (bounded); IntegrationError unless 2xx.

    With a `budget`, the request counts against it, and a wait that would pass its
    deadline raises OutOfBudget instead.
    """
    hidden = tuple(secrets)
    host = urlsplit(check_url(url)).hostname
    attempt = 0
    if budget is not None:
        budget.spend_request()
    body = _Body(json_body, form)
    reply = await _once(method, url, hidden, headers, body, params)
    while (wait := throttle(reply)) is not None:
        if wait > MAX_WAIT_SECONDS or attempt == MAX_RETRIES:
            raise IntegrationError(f"rate limited by {host} (asked to wait {wait:g} s)")
        if budget is not None:
            budget.check_wait(wait, f"rate limited by {host}")
        await asyncio.sleep(wait)
        attempt += 1
        reply = await _once(method, url, hidden, headers, body, params)
    if 300 <= reply.status < 400:
        raise IntegrationError(
            f"HTTP {reply.status} from {host}: redirects are not followed, use the final URL")
    if not 200 <= reply.status < 300:
        reason = _REASONS.get(reply.status)
        raise StatusError(f"HTTP {reply.status} from {host}"
                          f"{f': {reason}' if reason else ''}{_detail(reply, hidden)}", reply.status)
    if reply.body is None:
        raise IntegrationError(f"malformed JSON from {host}")
    return reply


@dataclass(frozen=True, slots=True)
class _Body:
    """What a request sends: JSON, or a form (`application/x-www-form-urlencoded`)."""

    json: Any
    form: Mapping[str, str] | None


async def _once(
    method: str, url: str, secrets: tuple[str, ...], headers: Mapping[str, str] | None,
    body: _Body, params: Mapping[str, str] | None,
) -> Reply:
    host = urlsplit(url).hostname
    try:
        async with session().request(
            method, url, headers=headers, json=body.json, data=body.form, params=params,
            allow_redirects=False,
        ) as response:
            raw = await _read(response, host)
            status, reply_headers = response.status, response.headers
    except TimeoutError:
        raise IntegrationError(f"{host} did not answer within {TIMEOUT_SECONDS:g} s") from None
    except (aiohttp.ClientError, ValueError) as exc:  # ValueError: e.g. a newline in a header
        reason = " ".join(scrub(str(exc) or type(exc).__name__, secrets).split())[:200]
        raise IntegrationError(f"request to {host} failed: {reason}") from None
    try:
        parsed = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        parsed = None
    return Reply(status, reply_headers, parsed)


async def _read(response: aiohttp.ClientResponse, host: str | None) -> bytes:
    too_big = IntegrationError(f"response from {host} exceeds {MAX_BODY_BYTES} bytes")
    if response.content_length is not None and response.content_length > MAX_BODY_BYTES:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _detail(reply: Reply, secrets: tuple[str, ...]) -> str:
    """`: <the platform's error message>` when the body carries one (WooCommerce, Shopify)."""
    body = reply.body
    message: Any = None
    if isinstance(body, dict):
        message = (body.get("message") or body.get("errors") or body.get("error_description")
                   or body.get("error"))
        code = body.get("code") or body.get("error")  # WooCommerce; OAuth (RFC 6749 5.2)
        if isinstance(code, str) and isinstance(message, str) and message != code:
            message = f"{code}: {message}"
    if isinstance(message, list) and message and isinstance(message[0], dict):
        message = message[0].get("message")
    if not isinstance(message, str) or not message.strip():
        return ""
    line = " ".join(scrub(message, secrets).split())
    return f": {line[:200]}"
