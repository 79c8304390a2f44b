"""The Prometheus metrics (README "Metrics and alerts"), on a registry of cartd's own, and
how a cycle and an attempt are counted in them."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from cartd import __version__
from cartd.sources import PLATFORMS

if TYPE_CHECKING:
    from cartd.cycle import CycleSummary
    from cartd.attempts import Attempt

disable_created_metrics()

ATTEMPT_RESULTS = ("2xx", "3xx", "4xx", "5xx", "timeout", "error")
DELIVERY_OUTCOMES = ("delivered", "retried", "dead", "withdrawn")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.build_info = Gauge("cartd_build_info", "cartd build, always 1", ["version"], registry=r)
        self.polling_enabled = Gauge("cartd_polling_enabled", "1 while polling is enabled",
                                     registry=r)
        self.poll_cycles = Counter("cartd_poll_cycles", "Poll cycles by outcome", ["outcome"],
                                   registry=r)
        self.cycle_duration = Histogram(
            "cartd_poll_cycle_duration_seconds", "Duration of poll cycles", registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.last_success = Gauge("cartd_poll_last_success_timestamp_seconds",
                                  "Unix time of the last successful poll cycle", registry=r)
        self.agents_found = Gauge("cartd_agents_found", "Agents polled in the last cycle",
                                  registry=r)
        self.integration_polls = Counter("cartd_integration_polls",
                                         "Integration fetches by platform and outcome",
                                         ["platform", "outcome"], registry=r)
        self.carts_detected = Counter("cartd_carts_detected", "New abandoned carts recorded",
                                      ["platform"], registry=r)
        self.carts_value = Counter("cartd_carts_value", "Value of new abandoned carts",
                                   ["platform", "currency"], registry=r)
        self.carts_recovered = Counter("cartd_carts_recovered",
                                       "Delivered carts that later completed", ["platform"],
                                       registry=r)
        self.webhook_attempts = Counter("cartd_webhook_attempts", "Webhook attempts by result",
                                        ["result"], registry=r)
        self.attempt_duration = Histogram(
            "cartd_webhook_attempt_duration_seconds", "Duration of webhook attempts", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30))
        self.deliveries = Counter("cartd_deliveries", "Delivery attempts by what they led to",
                                  ["outcome"], registry=r)
        self.deliveries_pending = Gauge("cartd_deliveries_pending", "Deliveries waiting",
                                        registry=r)
        self.deliveries_dead = Gauge("cartd_deliveries_dead", "Dead-lettered deliveries",
                                     registry=r)
        self.breaker_open = Gauge("cartd_breaker_open", "Destinations whose breaker is open",
                                  registry=r)
        # From the database (every instance shows the same), by the health loop.
        self.integrations_failing = Gauge("cartd_integrations_failing",
                                          "Active integrations whose last poll failed",
                                          ["platform"], registry=r)
        self.integration_poll_age = Gauge("cartd_integration_poll_age_seconds",
                                          "Longest time since an active integration's last"
                                          " successful poll", ["platform"], registry=r)
        self.config_reloads = Counter("cartd_config_reloads", "Config reloads by outcome",
                                      ["outcome"], registry=r)
        self.config_last_success = Gauge("cartd_config_last_reload_success_timestamp_seconds",
                                         "Unix time the config was last loaded successfully",
                                         registry=r)
        self._initialise()

    def _initialise(self) -> None:
        """Every label set at 0 (the build info at 1), so that series exist from the start."""
        self.build_info.labels(__version__).set(1)
        for outcome in ("ok", "error"):
            self.poll_cycles.labels(outcome)
            self.config_reloads.labels(outcome)
            for platform in PLATFORMS:
                self.integration_polls.labels(platform, outcome)
        for platform in PLATFORMS:
            self.carts_detected.labels(platform)
            self.carts_recovered.labels(platform)
            self.integrations_failing.labels(platform)
            self.integration_poll_age.labels(platform)
        # Counted on every attempt: the children, looked up once.
        self.attempts_by_result = {r: self.webhook_attempts.labels(r) for r in ATTEMPT_RESULTS}
        self.deliveries_by_outcome = {o: self.deliveries.labels(o) for o in DELIVERY_OUTCOMES}
        self.config_last_success.set(time.time())

    def count_cycle(self, summary: CycleSummary, seconds: float) -> None:
        self.poll_cycles.labels("ok").inc()
        self.cycle_duration.observe(seconds)
        self.last_success.set(time.time())
        self.agents_found.set(summary.agents_found)
        for (platform, outcome), n in summary.polls.items():
            if platform in PLATFORMS:  # an unknown platform would be an unbounded label
                self.integration_polls.labels(platform, outcome).inc(n)
        for platform, n in summary.new_by_platform.items():
            self.carts_detected.labels(platform).inc(n)
        for platform, n in summary.recovered_by_platform.items():
            self.carts_recovered.labels(platform).inc(n)
        for (platform, currency), value in summary.value_by.items():
            self.carts_value.labels(platform, currency).inc(float(value))
        self.deliveries_by_outcome["dead"].inc(summary.dead_lettered)

    def count_failed_cycle(self, seconds: float) -> None:
        self.poll_cycles.labels("error").inc()
        self.cycle_duration.observe(seconds)

    def count_attempt(self, attempt: Attempt, status: str) -> None:
        """An attempt's result (when a request went), and what the delivery's status
        became."""
        if attempt.sent:
            self.attempts_by_result[attempt.result].inc()
            self.attempt_duration.observe(attempt.seconds)
        outcome = status if status in ("delivered", "dead") else "retried"
        self.deliveries_by_outcome[outcome].inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    @contextlib.asynccontextmanager
    async def serving(self, listen: str) -> AsyncIterator[None]:
        """`/metrics` on `listen` (HOST:PORT) for the block."""
        host, _, port = listen.rpartition(":")
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host.strip("[]") or None, int(port)).start()
            yield
        finally:
            await runner.cleanup()

    def app(self) -> web.Application:
        async def metrics(_: web.Request) -> web.Response:
            response = web.Response(body=self.exposition())
            response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
            response.charset = "utf-8"
            return response

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app
