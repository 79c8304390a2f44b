"""Webhook receivers on 127.0.0.1 and what they received."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from aiohttp import web

from harness.common import free_port

DETECTED, RECOVERED = "abandoned_cart.detected", "abandoned_cart.recovered"


def app_of(handler) -> web.Application:
    """An application sending every method on every path to `handler`."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """`app` listening on a free port of 127.0.0.1 for the block; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Scripted:
    """A receiver on 127.0.0.1 answering from a script of (status, headers, delay)."""

    def __init__(self, script=None, default=(200, {}, 0.0)) -> None:
        self.script = list(script or [])
        self.default = default
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.active = 0
        self.peak = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        status, headers, delay = self.script.pop(0) if self.script else self.default
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(delay)
        finally:
            self.active -= 1
        return web.Response(status=status, headers=headers, text="{}")


@asynccontextmanager
async def scripted_receiver() -> AsyncIterator[Scripted]:
    """A Scripted receiver listening on 127.0.0.1 for the duration of the block."""
    scripted = Scripted()
    async with serving(app_of(scripted.handle)) as root:
        scripted.url = f"{root}/webhook"
        yield scripted


class LateReceiver(Scripted):
    """A receiver whose port is chosen now and that listens only once `up()` is called:
    until then every attempt is refused, and nothing reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/webhook"
        self._runner: web.AppRunner | None = None

    async def up(self) -> None:
        self._runner = web.AppRunner(app_of(self.handle))
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class RawReceiver:
    """A receiver on 127.0.0.1 that reads each request whole and answers it with bytes as
    they are (answers no HTTP library would write): `answers` in turn, then `default`."""

    def __init__(self, default: bytes, answers: tuple[bytes, ...] = ()) -> None:
        self.default = default
        self.answers = list(answers)
        self.requests = 0
        self.url = ""

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            self.requests += 1
            writer.write(self.answers.pop(0) if self.answers else self.default)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def raw_receiver(default: bytes, answers: tuple[bytes, ...] = ()) -> AsyncIterator[RawReceiver]:
    """A RawReceiver listening on 127.0.0.1 for the block; `url` is its /webhook."""
    raw = RawReceiver(default, answers)
    server = await asyncio.start_server(raw.answer, "127.0.0.1", 0)
    raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/webhook"
    try:
        yield raw
    finally:
        server.close()
        await server.wait_closed()


def bodies(receiver: Scripted) -> list[tuple[str, dict[str, Any]]]:
    """(webhook-id, body) of every request the receiver got, money as Decimal."""
    return [(headers["webhook-id"], json.loads(body, parse_float=Decimal))
            for headers, body in receiver.requests]


def carts_received(receiver: Scripted, event: str = DETECTED) -> list[tuple[str, str]]:
    """(integration id, cart id) of every cart the receiver got in an `event` webhook."""
    return [(b["integration"]["id"], c["cart_id"]) for _, b in bodies(receiver)
            if b["type"] == event for c in b["abandoned_carts"]]
