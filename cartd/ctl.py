"""The `cartd ctl` client (README "Controlling a running daemon"): the request each command
makes, and the call to the daemon's control socket; `ctl_text` shows the answer."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp

from cartd.config import control_socket, resolve_path

CALL_TIMEOUT = 300.0  # seconds a command may wait for the daemon (run-once polls first)


class BadRequest(ValueError):
    """Arguments that make no request (a usage error)."""


class Unreachable(Exception):
    """No answer at the control socket."""

    def __init__(self, socket_path: str, cause: BaseException) -> None:
        super().__init__(socket_path)
        self.socket_path = socket_path
        self.cause = cause


def request(args: argparse.Namespace) -> tuple[str, str, dict[str, str]]:
    """The method, path and query of a command."""
    action = args.action
    if action == "start":
        params = {} if args.interval is None else {"interval": f"{args.interval:g}"}
        return "POST", "/polling/start", params
    if action == "deliveries":
        params = {"limit": str(args.limit)}
        if args.status:
            params["status"] = args.status
        return "GET", "/deliveries", params
    if action == "preview":
        return "POST", "/polling/preview", {k: v for k, v in (
            ("agent", args.agent), ("integration", args.integration)) if v}
    if action == "integrations":
        params = {"limit": str(args.limit)}
        if args.failing:
            params["failing"] = "true"
        return "GET", "/integrations", params
    if action == "forget":
        return "POST", "/subjects/forget", {}
    if action == "replay":
        if args.id and not args.status and not args.since:
            return "POST", f"/deliveries/{quote(args.id, safe='')}/replay", {}
        if args.id is None and args.status == "dead":
            return "POST", "/deliveries/replay", {"status": "dead", **(
                {"since": args.since} if args.since else {})}
        raise BadRequest("replay takes a delivery ID, or --status dead [--since ISO]")
    return {"status": ("GET", "/status", {}), "stop": ("POST", "/polling/stop", {}),
            "run-once": ("POST", "/polling/run-once", {}),
            "reload": ("POST", "/reload", {})}[action]


def body(args: argparse.Namespace) -> dict[str, str] | None:
    """The JSON body of the request, for the commands that send one."""
    if args.action != "forget":
        return None
    if args.email and not (args.customer_id or args.integration_id):
        return {"email": args.email}
    if args.customer_id and args.integration_id and not args.email:
        return {"customer_id": args.customer_id, "integration_id": args.integration_id}
    raise BadRequest("forget takes --email E, or --customer-id C --integration-id I")


async def call(socket_path: str, method: str, path: str, params: dict[str, str],
               json_body: dict[str, str] | None) -> tuple[int, Any]:
    """The daemon's HTTP status and JSON answer."""
    connector = aiohttp.UnixConnector(path=socket_path)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with session.request(method, f"http://cartd{path}", params=params,
                                   json=json_body) as response:
            return response.status, await response.json(content_type=None)


def run(args: argparse.Namespace) -> tuple[int, Any]:
    """Call the daemon for a `cartd ctl` command: its HTTP status and answer. The socket is
    `--socket`, or `control.socket` read alone from the config file (it answers when the
    rest of the file is broken)."""
    method, path, params = request(args)
    json_body = body(args)
    socket_path = args.socket
    if not socket_path:
        config_path, missing_ok = resolve_path(args.config)
        socket_path = control_socket(config_path, missing_ok=missing_ok)
    try:
        return asyncio.run(call(socket_path, method, path, params, json_body))
    except (aiohttp.ClientError, OSError) as exc:
        raise Unreachable(socket_path, exc) from None
