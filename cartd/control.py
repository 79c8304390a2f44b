"""The control API (README "Controlling a running daemon"): HTTP/1.1 with JSON over a
Unix socket, in front of anything that is `Controlled` (the daemon)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from aiohttp import web

from cartd.db import DB_ERRORS, problem
from cartd.db.deliveries import STATUSES

MAX_BODY = 64 * 1024


class CannotListen(RuntimeError):
    """The control socket or the metrics endpoint cannot listen; the message names the
    key (`control.socket`, `metrics.listen`) and why."""

    @classmethod
    def of(cls, key: str, where: str, exc: OSError) -> CannotListen:
        return cls(f"{key} {where}: {exc.strerror or exc}")


class SocketInUse(CannotListen):
    """Another cartd answers on the control socket."""


class CycleFailed(Exception):
    """A cycle asked for could not run; the message says why."""


class Controlled(Protocol):
    """What the control API asks of the daemon."""

    async def status(self) -> dict[str, Any]: ...

    def start_polling(self, interval: float | None) -> None: ...

    async def stop_polling(self) -> None: ...

    async def run_once(self) -> dict[str, Any]:
        """The cycle's summary with its first attempts; raises CycleFailed."""
        ...

    async def reload(self) -> str | None:
        """The error of a config file that was not applied, else None."""
        ...

    async def deliveries(self, status: str | None, limit: int) -> list[dict[str, Any]]: ...

    async def replay(self, delivery_id: str) -> str | None:
        """The delivery's status before (a withdrawn one is not replayed), None if unknown."""
        ...

    async def replay_dead(self, since: datetime | None) -> int: ...

    async def preview(self, agent_id: UUID | None, integration_id: UUID | None,
                      limit: int) -> dict[str, Any]: ...

    async def integrations(self, failing: bool, limit: int) -> list[dict[str, Any]]: ...

    async def forget(self, **person: Any) -> dict[str, int]: ...


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(type(value).__name__)


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=_default), status=status,
                        content_type="application/json")


def error(message: str, status: int = 400) -> web.Response:
    return reply({"error": message}, status)


def parse_interval(text: str | None) -> float | None:
    """`interval=S` with 1 <= S <= 86400; raises ValueError with the reason."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"interval must be a number of seconds, not {text!r}") from None
    if not 1 <= value <= 86400:
        raise ValueError("interval must be between 1 and 86400 seconds")
    return value


def parse_since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"since must be an ISO 8601 time, not {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_limit(text: str | None, default: int = 50) -> int:
    """`limit=N` with 1 <= N <= 1000; raises ValueError with the reason."""
    try:
        limit = int(text if text is not None else default)
        if not 1 <= limit <= 1000:
            raise ValueError
    except ValueError:
        raise ValueError("limit must be a whole number between 1 and 1000") from None
    return limit


def parse_uuid(text: str | None, name: str) -> UUID | None:
    if not text:
        return None
    try:
        return UUID(text)
    except ValueError:
        raise ValueError(f"{name} must be a UUID, not {text!r}") from None


_PERSON = ('the body must be {"email": "..."} or {"customer_id": "...", "integration_id": "..."}'
           " with non-empty strings")


def parse_person(body: Any) -> dict[str, Any]:
    """`{"email"}` or `{"customer_id", "integration_id"}`: who to forget."""
    if not isinstance(body, dict):
        raise ValueError(_PERSON)
    keys = set(body)
    strings = all(isinstance(v, str) and v.strip() for v in body.values())
    if keys == {"email"} and strings:
        return {"email": body["email"]}
    if keys == {"customer_id", "integration_id"} and strings:
        return {"customer_id": body["customer_id"],
                "integration_id": parse_uuid(body["integration_id"], "integration_id")}
    raise ValueError(_PERSON)


def _polling_routes(routes: web.RouteTableDef, daemon: Controlled) -> None:
    @routes.get("/status")
    @routes.get("/polling/status")
    async def status(_: web.Request) -> web.Response:
        return reply(await daemon.status())

    @routes.post("/polling/start")
    @routes.post("/polling/start-abandoned-cart")
    async def start(request: web.Request) -> web.Response:
        try:
            interval = parse_interval(request.query.get("interval"))
        except ValueError as exc:
            return error(str(exc))
        daemon.start_polling(interval)
        return reply(await daemon.status())

    @routes.post("/polling/stop")
    async def stop(_: web.Request) -> web.Response:
        await daemon.stop_polling()
        return reply(await daemon.status())

    @routes.post("/polling/run-once")
    @routes.post("/polling/abandoned-cart/test-once")
    async def run_once(_: web.Request) -> web.Response:
        try:
            return reply(await daemon.run_once())
        except CycleFailed as exc:
            return error(str(exc), 503)

    @routes.post("/reload")
    async def reload(_: web.Request) -> web.Response:
        problem = await daemon.reload()
        if problem:
            return error(problem)
        return reply(await daemon.status())


def _delivery_routes(routes: web.RouteTableDef, daemon: Controlled) -> None:
    @routes.get("/deliveries")
    async def deliveries(request: web.Request) -> web.Response:
        status_filter = request.query.get("status") or None
        if status_filter is not None and status_filter not in STATUSES:
            return error(f"status must be one of {', '.join(STATUSES)}")
        try:
            limit = parse_limit(request.query.get("limit"))
        except ValueError as exc:
            return error(str(exc))
        return reply(await daemon.deliveries(status_filter, limit))

    @routes.post("/deliveries/replay")
    async def replay_many(request: web.Request) -> web.Response:
        if request.query.get("status", "dead") != "dead":
            return error("only status=dead can be replayed in bulk")
        try:
            since = parse_since(request.query.get("since"))
        except ValueError as exc:
            return error(str(exc))
        return reply({"replayed": await daemon.replay_dead(since)})

    @routes.post("/deliveries/{id}/replay")
    async def replay_one(request: web.Request) -> web.Response:
        delivery_id = request.match_info["id"]
        before = await daemon.replay(delivery_id)
        if before is None:
            return error(f"no delivery {delivery_id}", 404)
        if before == "withdrawn":
            return error(f"delivery {delivery_id} was withdrawn: its carts completed or their"
                         " customer was erased before it was sent, so it is never sent", 409)
        return reply({"replayed": 1, "id": delivery_id})


def _operator_routes(routes: web.RouteTableDef, daemon: Controlled) -> None:
    @routes.post("/polling/preview")
    async def preview(request: web.Request) -> web.Response:
        try:
            agent = parse_uuid(request.query.get("agent"), "agent")
            integration = parse_uuid(request.query.get("integration"), "integration")
            limit = parse_limit(request.query.get("limit"), default=100)
        except ValueError as exc:
            return error(str(exc))
        return reply(await daemon.preview(agent, integration, limit))

    @routes.get("/integrations")
    async def integrations(request: web.Request) -> web.Response:
        failing = request.query.get("failing", "false")
        if failing not in ("true", "false"):
            return error("failing must be true or false")
        try:
            limit = parse_limit(request.query.get("limit"))
        except ValueError as exc:
            return error(str(exc))
        return reply(await daemon.integrations(failing == "true", limit))

    @routes.post("/subjects/forget")
    async def forget(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text() or "null")
        except ValueError:
            return error("the body is not JSON")
        try:
            person = parse_person(body)
        except ValueError as exc:
            return error(str(exc))
        return reply(await daemon.forget(**person))


def build_app(daemon: Controlled) -> web.Application:
    routes = web.RouteTableDef()
    _polling_routes(routes, daemon)
    _delivery_routes(routes, daemon)
    _operator_routes(routes, daemon)

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            await request.read()  # bounded by client_max_size: a huge body is refused whole
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return error("request body too large", 413)
        except web.HTTPNotFound:
            return error(f"no such path: {request.path}", 404)
        except web.HTTPMethodNotAllowed as exc:
            return error(f"{request.method} is not allowed on {request.path}", exc.status)
        except DB_ERRORS as exc:
            return error(f"database: {problem(exc)}", 503)

    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY)
    app.add_routes(routes)
    return app


def claim_socket(path: Path) -> None:
    """Remove a stale socket left by a dead daemon; refuse if a live one answers."""
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise CannotListen.of("control.socket", str(path), exc) from None
    finally:
        probe.close()
    raise SocketInUse(f"control.socket {path} is in use: another cartd is running")


@contextlib.asynccontextmanager
async def serving(daemon: Controlled, path: Path, mode: str) -> AsyncIterator[None]:
    """The control API on the socket at `path`, born with `mode`, for the block; the
    socket is removed after it."""
    try:
        claim_socket(path)
    except OSError as exc:  # its folder cannot be made
        raise CannotListen.of("control.socket", str(path), exc) from None
    runner = web.AppRunner(build_app(daemon), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await _listen(runner, path, int(mode, 8))
    except BaseException as exc:
        await runner.cleanup()
        if isinstance(exc, OSError):
            raise CannotListen.of("control.socket", str(path), exc) from None
        raise
    try:
        yield
    finally:
        await runner.cleanup()
        path.unlink(missing_ok=True)


async def _listen(runner: web.AppRunner, path: Path, mode: int) -> None:
    site = web.UnixSite(runner, str(path))
    previous = os.umask(0o777 & ~mode)  # the socket is born with its mode
    try:
        await site.start()
    finally:
        os.umask(previous)
    os.chmod(path, mode)
