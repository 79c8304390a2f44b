"""The one way tests run cartd's command line: `cartd run` as a real subprocess with its
config file, control socket, metrics port, log and sd_notify socket (`Cartd`), and the
commands that run to their end (`cli`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from harness.common import CARTD, ROOT, SECRET, free_port, wait_until


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without cartd's variables and systemd's sockets (a
    test says which it wants), plus `extra`."""
    kept = {k: v for k, v in os.environ.items()
            if not k.startswith("CARTD_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    return {**kept, **extra}


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120
        ) -> subprocess.CompletedProcess:
    """`cartd ARGS` run to its end, with `env` added to the environment; its output."""
    return subprocess.run([*CARTD, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=environment(**(env or {})))


def metric(text: str, name: str) -> float:
    """The value of sample `name` (with its labels, as exposed) in a scrape."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


class Notifications:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)  # an earlier instance's, in the same folder
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []
        asyncio.get_running_loop().add_reader(self.sock, self._read)  # read as systemd does

    def _read(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return

    def poll(self) -> list[str]:
        self._read()
        return self.messages

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()

    def seen(self, line: str) -> bool:
        return any(line in m.splitlines() for m in self.poll())


class Cartd:
    """`cartd run` in `folder`: its config file (these settings, `overrides` merged in
    section by section), control socket, metrics port, log (stderr) and notify socket."""

    def __init__(self, folder: Path, dsn: str, url: str, **overrides: Any) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.socket = folder / "ctl.sock"
        self.metrics_port = free_port()
        self.config_path = folder / "cartd.yaml"
        self.log = folder / "cartd.log"
        self.settings: dict[str, Any] = {
            "state_dir": str(folder / "var"),
            "database": {"dsn": dsn},
            "polling": {"interval": "1h"},
            "webhook": {"url": url, "secret": SECRET},
            "control": {"socket": str(self.socket), "socket_mode": "0600"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "logging": {"format": "json"},
            "shutdown_timeout": "5s",
        }
        for key, value in overrides.items():
            if isinstance(value, dict):
                self.settings.setdefault(key, {}).update(value)
            else:
                self.settings[key] = value
        self.write()
        self.notify = Notifications(folder / "notify.sock")
        self.process: asyncio.subprocess.Process | None = None

    def write(self, text: str | None = None) -> None:
        """Write the config file: the settings, or `text` as it is."""
        self.config_path.write_text(text if text is not None else yaml.safe_dump(self.settings))

    async def start(self, **env: str) -> None:
        """Start it, with `env` added to its environment, and wait for READY=1."""
        self.process = await asyncio.create_subprocess_exec(
            *CARTD, "--config", str(self.config_path), "run", cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=self.log.open("ab"),
            env=environment(NOTIFY_SOCKET=str(self.notify.path), PYTHONUNBUFFERED="1", **env),
        )
        await wait_until(lambda: self.notify.seen("READY=1") or self.process.returncode is not None,
                         timeout=30)
        assert self.process.returncode is None, "cartd run exited at start"

    async def request(self, method: str, path: str, **params: str) -> tuple[int, dict]:
        """A request to the control API: (HTTP status, JSON body)."""
        connector = aiohttp.UnixConnector(path=str(self.socket))
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async with session.request(method, f"http://cartd{path}", params=params) as r:
                return r.status, await r.json()

    async def status(self) -> dict[str, Any]:
        return (await self.request("GET", "/status"))[1]

    async def wait_status(self, check: Callable[[dict[str, Any]], bool], timeout: float = 10,
                          interval: float = 0.05) -> dict[str, Any]:
        """Wait until GET /status answers what `check` accepts; that answer."""
        seen: list[dict[str, Any]] = []

        async def accepted() -> bool:
            seen[:] = [await self.status()]
            return check(seen[0])

        await wait_until(accepted, timeout=timeout, interval=interval)
        return seen[0]

    async def scrape(self) -> str:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
                assert r.status == 200
                return await r.text()

    async def wait_metric(self, name: str, check: Callable[[float], bool],
                          timeout: float = 10) -> None:
        """Wait until the scraped sample `name` has a value `check` accepts."""
        async def accepted() -> bool:
            return check(metric(await self.scrape(), name))

        await wait_until(accepted, timeout=timeout)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        """`cartd ctl --socket SOCKET ARGS`, run to its end."""
        return cli("ctl", "--socket", str(self.socket), *args)

    async def actl(self, *args: str) -> tuple[int, Any]:
        """`ctl` from the event loop: (exit code, its JSON output or its error)."""
        result = await asyncio.to_thread(self.ctl, *args)
        return result.returncode, json.loads(result.stdout) if result.stdout else result.stderr

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log's JSON lines of event `name`, in order."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [e for e in (json.loads(line) for line in lines if line.startswith("{"))
                if e.get("event") == name]

    async def terminate(self) -> int:
        """SIGTERM; its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 15)

    async def kill(self) -> None:
        """kill -9, and wait for it to be gone."""
        self.process.kill()
        await self.process.wait()

    async def close(self) -> None:
        if self.process and self.process.returncode is None:
            await self.kill()
        self.notify.close()


@asynccontextmanager
async def cartd_run(folder: Path, dsn: str, url: str, **overrides: Any) -> AsyncIterator[Cartd]:
    """A `Cartd` for the block (not started: call `start`), killed at its end if it runs."""
    daemon = Cartd(folder, dsn, url, **overrides)
    try:
        yield daemon
    finally:
        await daemon.close()
