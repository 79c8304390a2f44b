"""The test harness every test uses: shared constants, the clock and waits, seeding,
receivers, what cartd recorded, and the ways to run cartd: `Cartd` (a real `cartd run`
subprocess), `cli` (a command run to its end), `running_daemon`, `delivering` and
`Pipeline` (cartd's parts in the test's event loop).

Fakes of the stores stay their own support modules beside it (fakestore.py, cartshop.py,
shopify_graphql.py, pgbouncer.py, records.py)."""

from harness.common import (CARTD, FAST_RETRIES, ROOT, SECRET, SLUG, Clock, config, free_port,
                            new_secret, wait_until)
from harness.daemon import Cartd, Notifications, cartd_run, cli, environment, metric
from harness.inprocess import Pipeline, delivering, running_daemon
from harness.outbox import (accounted, all_delivered, cartd_rows, delivery_row, nothing_pending,
                            recorded)
from harness.proxy import Proxy, proxied
from harness.receivers import (DETECTED, RECOVERED, LateReceiver, RawReceiver, Scripted, app_of,
                               bodies, carts_received, raw_receiver, scripted_receiver, serving)
from harness.seeding import (PLATFORMS, AppData, add_agent, add_agents, enqueue,
                             live_integration)

__all__ = [
    "CARTD", "DETECTED", "FAST_RETRIES", "PLATFORMS", "RECOVERED", "ROOT", "SECRET", "SLUG",
    "AppData", "Cartd", "Clock", "LateReceiver", "Notifications", "Pipeline", "Proxy",
    "RawReceiver", "Scripted", "accounted", "add_agent", "add_agents", "all_delivered",
    "app_of", "bodies", "cartd_rows", "cartd_run", "carts_received", "cli", "config",
    "delivering", "delivery_row", "enqueue", "environment", "free_port", "live_integration",
    "metric", "new_secret", "nothing_pending", "proxied", "raw_receiver", "recorded",
    "running_daemon", "scripted_receiver", "serving", "wait_until",
]
