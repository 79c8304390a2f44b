"""Operating a real `cartd run`: the control socket, metrics, reloads, sd_notify, a
database that goes away. Real subprocesses, real signals, real scrapes."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess

import pytest

from harness import (add_agents, cartd_run, cli, metric, nothing_pending, proxied,
                     scripted_receiver, wait_until)

pytestmark = pytest.mark.reliability  # part of the fault-injection suite

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
        # Refused as invalid (400): bad usage, exit 2; any other error answer: exit 1.
        code, refused = await d.actl("deliveries", "--limit", "5000")
        assert code == 2 and "limit must be" in refused["error"]
        code, refused = await d.actl("replay", "--status", "dead", "--since", "yesterday")
        assert code == 2 and "since must be an ISO 8601 time" in refused["error"]
        code, unknown = await d.actl("replay", "msg_unknown")
        assert code == 1 and unknown["error"] == "no delivery msg_unknown"

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
        await d.wait_status(lambda status: status["interval_seconds"] == 45)
        assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in d.notify.poll())
        for broken in ("polling: [unclosed\n", "polling:\n  intervl: 5s\n",
                       "polling:\n  interval: soon\n",
                       "webhook:\n  secret_file: /nonexistent/secret\n"):
            d.write(broken)
            d.process.send_signal(signal.SIGHUP)
            status = await d.wait_status(lambda status: status["config_error"] is not None)
            assert status["interval_seconds"] == 45 and status["state"] == "running"
            d.write()
            d.process.send_signal(signal.SIGHUP)
            await d.wait_status(lambda status: status["config_error"] is None)
        d.write("polling:\n  interval: 0\n")
        code, body = await d.request("POST", "/reload")
        assert code == 400 and "polling.interval" in body["error"]
        text = await d.scrape()
        assert metric(text, 'cartd_config_reloads_total{outcome="error"}') == 5
        assert metric(text, 'cartd_config_reloads_total{outcome="ok"}') == 5
        assert await d.terminate() == 0
        assert d.notify.seen("STOPPING=1")


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
        second = await asyncio.to_thread(cli, "--config", str(d.config_path), "run", timeout=60)
        assert second.returncode == 1
        assert "another cartd is running" in second.stderr.strip().splitlines()[-1]
        code, _ = await d.request("GET", "/status")
        assert code == 200
        assert await d.terminate() == 0


async def test_a_database_that_goes_away_and_comes_back(store, dsn, tmp_path):
    await add_agents(store, 2)
    proxy, via_proxy = proxied(dsn)
    async with scripted_receiver() as receiver, cartd_run(tmp_path, via_proxy, receiver.url,
                                                          polling={"interval": "1s"}) as d:
        await d.start()  # the database is not there yet: still READY
        status = await d.status()
        assert status["database"] != "ok" and status["deliveries"] is None
        await d.wait_metric('cartd_poll_cycles_total{outcome="error"}', lambda n: n >= 1)
        await proxy.up()
        await d.wait_status(lambda status: status["database"] == "ok", timeout=20)
        await wait_until(lambda: len(receiver.requests) > 0, timeout=20)
        await proxy.down()
        await d.wait_status(lambda status: status["database"] != "ok", timeout=20)
        await proxy.up()
        await d.wait_status(lambda status: status["database"] == "ok", timeout=20)
        await d.actl("run-once")
        # What was enqueued before and during the outage is delivered without help.
        await wait_until(lambda: nothing_pending(store), timeout=20)
        assert await d.terminate() == 0
    await proxy.down()
    counts = await store.deliveries.counts()
    assert counts["pending"] == 0 and counts["delivered"] == len(
        {h["webhook-id"] for h, _ in receiver.requests})

