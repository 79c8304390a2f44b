"""What the live connectors share: the records a read gathered and how far it got.

A store is read in slices: each cycle a read may spend its `http.Budget` (requests and a
share of the polling interval). When either runs out it stops at a point up to which
the store was read completely and says so (`Read.through`, or `Read.resume` for a store
read in an order that is not by time); the next cycle goes on from there (README
"Connecting stores").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cartd.model import Cart
from cartd.sources.errors import IntegrationError
from cartd.sources.fields import Gathered
from cartd.sources.http import check_url


@dataclass(frozen=True, slots=True)
class Read:
    """The carts of one read and how far it got.

    `through`: every record changed up to then was read (None: no further than the
    cursor it started from). `read_at`: when the earliest of those records were read,
    so that carts not yet idle long enough then are read again. `resume`: where a read
    that stopped inside a window goes on (JSON, kept with the cursor), else None.
    `stopped`: why it stopped early, else None.
    """

    carts: list[Cart]
    malformed: Counter[str]  # records skipped, by reason
    through: datetime | None
    read_at: datetime
    resume: dict[str, Any] | None = None
    stopped: str | None = None


class Batch(Gathered):
    """The pages' records normalised into carts, one per cart id (`Gathered`); malformed
    ones are counted by reason, not fatal."""

    __slots__ = ("normalise",)

    def __init__(self, normalise: Callable[[Any], Cart]) -> None:
        super().__init__()
        self.normalise = normalise

    def add(self, records: Any, what: str) -> None:
        if not isinstance(records, list):
            raise IntegrationError(f"malformed response: {what} is not a list")
        self.gather(records, self.normalise)


def option(settings: dict[str, Any], key: str, default: str | None = None) -> str:
    value = settings.get(key, default)
    if value is None or value == "":
        raise IntegrationError(f"config.{key} is missing")
    if not isinstance(value, str):
        raise IntegrationError(f"config.{key} must be a string")
    return value


def base_url(settings: dict[str, Any]) -> str:
    """`config.base_url` without its trailing slash, once it passed the URL rules."""
    return check_url(option(settings, "base_url").rstrip("/"))


def next_page(url: Any, first: str) -> str:
    """A next-page URL a store gave, if it is an absolute URL on the origin (scheme, host,
    port) of the `first` one: the store's credentials go with it, to nowhere else."""
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        origin = parts and (parts.scheme, parts.hostname, parts.port)
    except ValueError:
        origin = None
    if not origin or not origin[1]:
        raise IntegrationError("malformed response: the next page is not an absolute URL")
    start = urlsplit(first)
    if origin != (start.scheme, start.hostname, start.port):
        raise IntegrationError(f"malformed response: the next page is on {_origin(*origin)}, "
                               f"not on {_origin(start.scheme, start.hostname, start.port)}")
    return url


def _origin(scheme: str, host: str | None, port: int | None) -> str:
    return f"{scheme[:10]}://{str(host)[:80]}{'' if port is None else f':{port}'}"


def status_list(settings: dict[str, Any], key: str, default: tuple[str, ...]) -> list[str]:
    """A non-empty list of distinct status names from `config.{key}`."""
    configured = settings.get(key, default)
    if (not isinstance(configured, list | tuple) or not configured
            or not all(isinstance(s, str) and s for s in configured)):
        raise IntegrationError(f"config.{key} must be a non-empty list of order statuses")
    return list(dict.fromkeys(configured))
