"""A webhook receiver that verifies Standard Webhooks signatures.

Used by `cartd receiver`, the demo and the tests. Every request must carry `webhook-id`
and `webhook-timestamp`; with secrets configured it must also carry a `webhook-signature`
that verifies with one of them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiohttp import web

from cartd.signing import SignatureError, Signer

MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Received:
    """One delivery that passed verification and parsing."""

    webhook_id: str
    timestamp: int
    headers: dict[str, str]  # lower-cased names
    body: bytes  # exactly as received
    payload: dict[str, Any]  # JSON numbers with a fraction are Decimal
    verified: bool  # False when the receiver has no secret
    received_at: float  # Unix seconds


class BadRequest(Exception):
    """A request that is not a well-formed delivery (answered 400)."""


class Receiver:
    """An aiohttp app answering `POST` on any path (the canonical one is `/webhook`).

    `received` holds every delivery that passed verification and parsing, in arrival
    order, whatever `status_for` answered it. `status_for` may return a status code or a
    whole response (e.g. 429 with `Retry-After`); by default the answer is 200
    `{"ok": true}`. `on_reject(webhook_id, reason)` hears of the 400s and 401s.
    """

    def __init__(
        self,
        secrets: tuple[str, ...] = (),
        *,
        on_delivery: Callable[[Received], None] | None = None,
        status_for: Callable[[Received], int | web.Response] | None = None,
        on_reject: Callable[[str, str], None] | None = None,
    ) -> None:
        self._signer = Signer(secrets)
        self._on_delivery = on_delivery
        self._status_for = status_for
        self._on_reject = on_reject
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.received: list[Received] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/{path:.*}", self._handle)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 picks a free port); returns the bound port."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float) -> None:
        """Return once `predicate(received)` holds; raise TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(lambda: predicate(self.received))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        webhook_id = headers.get("webhook-id", "")
        try:
            if self._signer:
                self._signer.verify(headers, body)
        except SignatureError as exc:
            return self._reject(webhook_id, str(exc), 401)
        try:
            received = _parse(headers, body, verified=bool(self._signer))
        except BadRequest as exc:
            return self._reject(webhook_id, str(exc), 400)
        async with self._arrived:
            self.received.append(received)
            self._arrived.notify_all()
        if self._on_delivery is not None:
            self._on_delivery(received)
        answer = 200 if self._status_for is None else self._status_for(received)
        if isinstance(answer, web.Response):
            return answer
        return web.json_response({"ok": 200 <= answer < 300}, status=answer)

    def _reject(self, webhook_id: str, reason: str, status: int) -> web.Response:
        if self._on_reject is not None:
            self._on_reject(webhook_id, reason)
        return web.json_response({"error": reason}, status=status)


def _parse(headers: dict[str, str], body: bytes, *, verified: bool) -> Received:
    webhook_id = headers.get("webhook-id", "")
    if not webhook_id:
        raise BadRequest("missing webhook-id header")
    try:
        timestamp = int(headers.get("webhook-timestamp", ""))
    except ValueError:
        raise BadRequest("missing or invalid webhook-timestamp header") from None
    try:
        payload = json.loads(body, parse_float=Decimal)
    except ValueError:
        raise BadRequest("body is not JSON") from None
    if not isinstance(payload, dict):
        raise BadRequest("body is not a JSON object")
    return Received(webhook_id, timestamp, headers, body, payload, verified, time.time())


def _get(payload: Any, *path: str) -> Any:
    for key in path:
        payload = payload.get(key) if isinstance(payload, dict) else None
    return payload


def describe(received: Received) -> str:
    """One line for a delivery: id, type, platform, carts, total value, verified."""
    payload = received.payload
    carts = payload.get("abandoned_carts")
    total = _get(payload, "recovery_analytics", "total_value")
    currency = _get(payload, "recovery_analytics", "currency") or ""
    value = f"{total} {currency}".strip() if total is not None else "?"
    return (
        f"{received.webhook_id} {payload.get('type', '?')}"
        f" platform={_get(payload, 'integration', 'platform') or '?'}"
        f" carts={len(carts) if isinstance(carts, list) else 0}"
        f" total_value={value}"
        f" {'verified' if received.verified else 'unverified'}"
    )


def print_delivery(received: Received) -> None:
    print(describe(received), flush=True)


def print_rejection(webhook_id: str, reason: str) -> None:
    print(f"{webhook_id or '-'} REJECTED {reason}", flush=True)


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[IPv6]:PORT`) as a (host, port) pair; raises ValueError."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


async def serve(listen: str, secret: str | None) -> None:
    """`cartd receiver`: print one line per delivery on stdout until cancelled.

    Raises ValueError for a bad `listen` or `secret`, OSError when it cannot listen.
    """
    host, port = parse_listen(listen)
    try:
        receiver = Receiver(
            (secret,) if secret else (), on_delivery=print_delivery, on_reject=print_rejection
        )
    except ValueError as exc:
        raise ValueError(f"--secret: {exc}") from None
    bound = await receiver.start(host, port)
    checking = "verifying signatures" if secret else "NOT verifying signatures (no --secret)"
    url = f"http://{listen.rpartition(':')[0]}:{bound}/webhook"
    print(f"cartd receiver listening on {url}, {checking}", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await receiver.stop()
