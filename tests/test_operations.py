"""Operating a real `cartd run`: the control socket, metrics, reloads, sd_notify, a
database that goes away. Real subprocesses, real signals, real scrapes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from cartd.db import Store
from helpers import ROOT, add_agents, scripted_receiver, wait_until

pytestmark = pytest.mark.reliability  # part of the fault-injection suite

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_METRICS = (
    "cartd_build_info", "cartd_polling_enabled", "cartd_poll_cycles_total",
    "cartd_poll_cycle_duration_seconds", "cartd_poll_last_success_timestamp_seconds",
    "cartd_agents_found", "cartd_integration_polls_total", "cartd_carts_detected_total",
    "cartd_carts_value_total", "cartd_carts_recovered_total", "cartd_webhook_attempts_total",
    "cartd_webhook_attempt_duration_seconds", "cartd_deliveries_total",
    "cartd_deliveries_pending", "cartd_deliveries_dead", "cartd_breaker_open",
    "cartd_integrations_failing", "cartd_integration_poll_age_seconds",
    "cartd_config_reloads_total", "cartd_config_last_reload_success_timestamp_seconds",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Notifications:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
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
    def __init__(self, tmp: Path, dsn: str, url: str, **overrides) -> None:
        self.tmp = tmp
        self.socket = tmp / "ctl.sock"
        self.metrics_port = free_port()
        self.config_path = tmp / "cartd.yaml"
        self.log = tmp / "cartd.log"
        self.settings = {
            "state_dir": str(tmp / "var"),
            "database": {"dsn": dsn},
            "polling": {"interval": "1h"},
            "webhook": {"url": url, "secret": SECRET},
            "control": {"socket": str(self.socket), "socket_mode": "0600"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "logging": {"format": "json"},
            "shutdown_timeout": "5s",
        }
        for key, value in overrides.items():
            self.settings.setdefault(key, {}).update(value) if isinstance(value, dict) \
                else self.settings.__setitem__(key, value)
        self.write()
        self.notify = Notifications(tmp / "notify.sock")
        self.process: asyncio.subprocess.Process | None = None

    def write(self, text: str | None = None) -> None:
        self.config_path.write_text(text if text is not None else yaml.safe_dump(self.settings))

    async def start(self, **env: str) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cartd", "--config", str(self.config_path), "run", cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=self.log.open("ab"),
            env={**os.environ, "NOTIFY_SOCKET": str(self.notify.path), **env},
        )
        await wait_until(lambda: self.notify.seen("READY=1") or self.process.returncode is not None,
                         timeout=30)
        assert self.process.returncode is None, "cartd run exited at start"

    async def request(self, method: str, path: str, **params) -> tuple[int, dict]:
        connector = aiohttp.UnixConnector(path=str(self.socket))
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async with session.request(method, f"http://cartd{path}", params=params) as r:
                return r.status, await r.json()

    async def scrape(self) -> str:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
                assert r.status == 200
                return await r.text()

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cartd", "ctl", "--socket", str(self.socket),
                               *args], capture_output=True, text=True, timeout=120, cwd=ROOT)

    async def actl(self, *args: str) -> tuple[int, object]:
        result = await asyncio.to_thread(self.ctl, *args)
        return result.returncode, json.loads(result.stdout) if result.stdout else result.stderr

    async def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 15)

    async def close(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.notify.close()


@asynccontextmanager
async def cartd_run(tmp: Path, dsn: str, url: str, **overrides) -> AsyncIterator[Cartd]:
    daemon = Cartd(tmp, dsn, url, **overrides)
    try:
        yield daemon
    finally:
        await daemon.close()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


async def test_every_control_endpoint_and_ctl_command(store, dsn, tmp_path):
    await add_agents(store, 3)
    async with scripted_receiver() as receiver, cartd_run(tmp_path, dsn, receiver.url,
                                                          polling={"enabled": False}) as d:
        await d.start()
        assert oct(d.socket.stat().st_mode & 0o777) == "0o600"
        code, status = await d.actl("status")
        assert code == 0 and status["state"] == "stopped" and status["database"] == "ok"
        assert status["version"] and status["instance_id"] and status["config_error"] is None
        assert status["config_path"] == str(d.config_path)
        assert status["deliveries"] == {"pending": 0, "delivered": 0, "dead": 0}

        code, once = await d.actl("run-once")
        assert code == 0 and once["agents_found"] == 3 and once["deliveries_enqueued"] > 0
        assert once["deliveries_succeeded"] == once["deliveries_enqueued"] == len(receiver.requests)
        assert once["deliveries_failed"] == 0
        for key in ("cycle_id", "started_at", "duration_seconds", "integrations_processed",
                    "platforms_processed", "integration_errors", "carts_found", "carts_new",
                    "recovery_value"):
            assert key in once

        code, listed = await d.actl("deliveries", "--status", "delivered", "--limit", "2")
        assert code == 0 and len(listed) == 2 and listed[0]["status"] == "delivered"
        assert set(listed[0]) >= {"id", "status", "agent_id", "integration_id", "type", "carts",
                                  "attempts", "last_status", "last_error", "next_attempt_at",
                                  "created_at", "delivered_at"}
        first = listed[0]["id"]
        code, replayed = await d.actl("replay", first)
        assert code == 0 and replayed["replayed"] == 1
        await wait_until(lambda: [h["webhook-id"] for h, _ in receiver.requests].count(first) == 2)
        code, bulk = await d.actl("replay", "--status", "dead", "--since", "2020-01-01T00:00:00Z")
        assert code == 0 and bulk == {"replayed": 0}

        code, started = await d.actl("start", "--interval", "120")
        assert code == 0 and started["state"] == "running" and started["interval_seconds"] == 120
        code, stopped = await d.actl("stop")
        assert code == 0 and stopped["state"] == "stopped"
        code, reloaded = await d.actl("reload")
        assert code == 0 and reloaded["config_error"] is None

        # The original service's paths.
        status_code, body = await d.request("POST", "/polling/start-abandoned-cart", interval="30")
        assert status_code == 200 and body["state"] == "running" and body["interval_seconds"] == 30
        status_code, body = await d.request("GET", "/polling/status")
        assert status_code == 200 and body["state"] == "running"
        status_code, body = await d.request("POST", "/polling/abandoned-cart/test-once")
        assert status_code == 200 and body["agents_found"] == 3
        status_code, body = await d.request("POST", "/polling/stop")
        assert status_code == 200 and body["state"] == "stopped"

        for bad in ("0", "86401", "abc", "-5", ""):
            status_code, body = await d.request("POST", "/polling/start", interval=bad)
            assert status_code == 400 and "interval" in body["error"], bad
        status_code, body = await d.request("GET", "/nope")
        assert status_code == 404 and "error" in body
        status_code, body = await d.request("GET", "/deliveries", status="weird")
        assert status_code == 400
        status_code, body = await d.request("POST", "/deliveries/msg_unknown/replay")
        assert status_code == 404
        assert await d.terminate() == 0
    assert not d.socket.exists()
    result = d.ctl("status")
    assert result.returncode == 1 and "cannot reach" in result.stderr


async def test_metrics_match_what_the_receiver_saw(store, dsn, tmp_path):
    await add_agents(store, 3)
    async with scripted_receiver() as receiver, cartd_run(tmp_path, dsn, receiver.url,
                                                          polling={"enabled": False}) as d:
        await d.start()
        before = await d.scrape()
        for name in SPEC_METRICS:
            assert f"# TYPE {name.removesuffix('_total')}" in before or f"# TYPE {name} " in before
        assert 'cartd_webhook_attempts_total{result="timeout"} 0.0' in before
        assert 'cartd_integration_polls_total{outcome="error",platform="custom"} 0.0' in before
        assert 'cartd_deliveries_total{outcome="withdrawn"} 0.0' in before
        assert 'cartd_integrations_failing{platform="woocommerce"} 0.0' in before
        _, once = await d.actl("run-once")
        text = await d.scrape()
        assert metric(text, 'cartd_webhook_attempts_total{result="2xx"}') == len(receiver.requests)
        assert metric(text, 'cartd_deliveries_total{outcome="delivered"}') == len(receiver.requests)
        carts = sum(len(json.loads(b)["abandoned_carts"]) for _, b in receiver.requests)
        detected = sum(metric(text, f'cartd_carts_detected_total{{platform="{p}"}}')
                       for p in ("shopify", "woocommerce", "custom"))
        assert detected == carts == once["carts_new"]
        assert metric(text, 'cartd_poll_cycles_total{outcome="ok"}') == 1
        assert metric(text, "cartd_agents_found") == 3
        assert metric(text, "cartd_poll_last_success_timestamp_seconds") > 0
        if shutil.which("promtool"):
            lint = subprocess.run(["promtool", "check", "metrics"], input=text,
                                  capture_output=True, text=True)
            assert lint.returncode == 0 and lint.stdout.strip() == "" and lint.stderr.strip() == "", \
                lint.stdout + lint.stderr
        assert await d.terminate() == 0


async def test_sighup_applies_a_valid_file_and_keeps_the_old_one_when_broken(store, dsn, tmp_path):
    async with scripted_receiver() as receiver, cartd_run(tmp_path, dsn, receiver.url) as d:
        await d.start()
        d.settings["polling"]["interval"] = "45s"
        d.write()
        d.process.send_signal(signal.SIGHUP)
        await wait_until(lambda: _status_is(d, "interval_seconds", 45))
        assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in d.notify.poll())
        for broken in ("polling: [unclosed\n", "polling:\n  intervl: 5s\n",
                       "polling:\n  interval: soon\n",
                       "webhook:\n  secret_file: /nonexistent/secret\n"):
            d.write(broken)
            d.process.send_signal(signal.SIGHUP)
            await wait_until(lambda: _status_is(d, "config_error", None, negate=True))
            _, status = await d.request("GET", "/status")
            assert status["interval_seconds"] == 45 and status["state"] == "running"
            d.write()
            d.process.send_signal(signal.SIGHUP)
            await wait_until(lambda: _status_is(d, "config_error", None))
        d.write("polling:\n  interval: 0\n")
        code, body = await d.request("POST", "/reload")
        assert code == 400 and "polling.interval" in body["error"]
        text = await d.scrape()
        assert metric(text, 'cartd_config_reloads_total{outcome="error"}') == 5
        assert metric(text, 'cartd_config_reloads_total{outcome="ok"}') == 5
        assert await d.terminate() == 0
        assert d.notify.seen("STOPPING=1")


async def _status_is(d: Cartd, key: str, value, negate: bool = False) -> bool:
    _, status = await d.request("GET", "/status")
    return (status[key] != value) if negate else (status[key] == value)


async def test_sd_notify_ready_status_and_watchdog(store, dsn, tmp_path):
    await add_agents(store, 1)
    async with scripted_receiver() as receiver, cartd_run(tmp_path, dsn, receiver.url) as d:
        await d.start(WATCHDOG_USEC="400000")
        await wait_until(lambda: sum(m == "WATCHDOG=1" for m in d.notify.poll()) >= 3)
        await wait_until(lambda: any(m.startswith("STATUS=cycle 1:") for m in d.notify.poll()))
        assert await d.terminate() == 0


async def test_a_stale_socket_is_replaced_and_a_live_one_refused(store, dsn, tmp_path):
    async with scripted_receiver() as receiver, cartd_run(tmp_path, dsn, receiver.url) as d:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(d.socket))
        stale.close()  # the file stays, nobody listens: a dead daemon's socket
        await d.start()
        second = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "cartd", "--config", str(d.config_path), "run"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"})
        assert second.returncode == 1
        assert "another cartd is running" in second.stderr.strip().splitlines()[-1]
        code, _ = await d.request("GET", "/status")
        assert code == 200
        assert await d.terminate() == 0


class Proxy:
    """A TCP front for the test PostgreSQL that the test can take down and bring back."""

    def __init__(self, target: tuple) -> None:
        self.target = target
        self.port = free_port()
        self.server: asyncio.base_events.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def down(self) -> None:
        self.server.close()
        for writer in list(self.links):
            writer.close()
        await self.server.wait_closed()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.target[0] == "unix":
                up_reader, up_writer = await asyncio.open_unix_connection(self.target[1])
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target[1:])
        except OSError:
            writer.close()
            return
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def proxied(dsn: str, port: int) -> tuple[tuple, str]:
    parts = urlsplit(dsn)
    query = dict(p.split("=", 1) for p in parts.query.split("&") if p)
    host = query.pop("host", parts.hostname)
    if host and host.startswith("/"):
        target = ("unix", f"{host}/.s.PGSQL.{parts.port or 5432}")
    else:
        target = ("tcp", host or "127.0.0.1", parts.port or 5432)
    user = parts.username or "postgres"
    auth = f"{user}:{parts.password}@" if parts.password else f"{user}@"
    return target, f"postgresql://{auth}127.0.0.1:{port}{parts.path}"


async def test_a_database_that_goes_away_and_comes_back(store, dsn, tmp_path):
    await add_agents(store, 2)
    proxy = Proxy(("tcp", "0", 0))
    proxy.target, via_proxy = proxied(dsn, proxy.port)
    async with scripted_receiver() as receiver, cartd_run(tmp_path, via_proxy, receiver.url,
                                                          polling={"interval": "1s"}) as d:
        await d.start()  # the database is not there yet: still READY
        _, status = await d.request("GET", "/status")
        assert status["database"] != "ok" and status["deliveries"] is None
        await wait_until(lambda: _scraped_at_least(d, 'cartd_poll_cycles_total{outcome="error"}', 1))
        await proxy.up()
        await wait_until(lambda: _status_is(d, "database", "ok"), timeout=20)
        await wait_until(lambda: len(receiver.requests) > 0, timeout=20)
        await proxy.down()
        await wait_until(lambda: _status_is(d, "database", "ok", negate=True), timeout=20)
        await proxy.up()
        await wait_until(lambda: _status_is(d, "database", "ok"), timeout=20)
        await d.actl("run-once")
        # What was enqueued before and during the outage is delivered without help.
        await wait_until(lambda: _nothing_pending(store), timeout=20)
        assert await d.terminate() == 0
    await proxy.down()
    counts = await store.deliveries.counts()
    assert counts["pending"] == 0 and counts["delivered"] == len(
        {h["webhook-id"] for h, _ in receiver.requests})


async def _nothing_pending(store: Store) -> bool:
    return (await store.deliveries.counts())["pending"] == 0


async def _scraped_at_least(d: Cartd, name: str, n: float) -> bool:
    return metric(await d.scrape(), name) >= n
