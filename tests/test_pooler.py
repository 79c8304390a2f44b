"""cartd behind Debian's PgBouncer 1.18 in transaction mode (`database.pooler:
transaction`): migrate, seed-demo, and a real `cartd run` for several cycles whose
deliveries reach a receiver, every statement through the pooler."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import yaml

import pgbouncer
from cartd.db import Store
from harness import add_agents, all_delivered, cartd_run, cli, metric, scripted_receiver, wait_until

pytestmark = pytest.mark.skipif(pgbouncer.missing() is not None,
                                reason=pgbouncer.missing() or "")


async def test_the_pooler_really_moves_sessions_between_server_connections(store, dsn):
    """The control: cartd's pool without `pooler: transaction` breaks on this PgBouncer
    (asyncpg's named prepared statements stay on the server connection that made them),
    and works with it."""
    with pgbouncer.pgbouncer(dsn, pool_size=2) as via:
        for pooler in ("none", "transaction"):
            pool = (await Store.connect(via, 2, 2, pooler=pooler)).pool
            try:
                async with pool.acquire() as one, pool.acquire() as other:
                    async with other.transaction():  # two server connections, both idle after
                        await one.execute("SELECT 1")
                    await one.fetchval("SELECT $1::int", 1)  # on one of them
                    if pooler == "none":
                        with pytest.raises(asyncpg.InvalidSQLStatementNameError):
                            await one.fetchval("SELECT $1::int", 2)  # on the other
                    else:
                        assert await one.fetchval("SELECT $1::int", 2) == 2
            finally:
                pool.terminate()


async def test_migrate_seed_and_several_cycles_with_deliveries_through_pgbouncer(dsn, tmp_path):
    with pgbouncer.pgbouncer(dsn) as via:
        config = tmp_path / "cli.yaml"
        config.write_text(yaml.safe_dump({"database": {"dsn": via, "pooler": "transaction"}}))
        migrations = await asyncio.gather(*(asyncio.to_thread(
            cli, "--config", str(config), "migrate", "--app-tables") for _ in range(2)))
        assert [m.returncode for m in migrations] == [0, 0], [m.stderr for m in migrations]
        assert sorted(m.stdout.strip().split(":")[0] for m in migrations) == ["applied", "up to date"]
        seeded = await asyncio.to_thread(cli, "--config", str(config), "seed-demo", "--agents", "4")
        assert seeded.returncode == 0 and "2 abandoned-cart agents" in seeded.stdout, seeded.stderr

        direct = await Store.connect(dsn, 1, 2)
        async with scripted_receiver() as receiver, cartd_run(
                tmp_path, via, receiver.url, database={"pooler": "transaction"},
                polling={"interval": "1s"}) as daemon:
            await daemon.start()
            for cycle in (1, 2, 3):  # two new agents after each cycle with deliveries
                await wait_until(lambda: _cycles_with_deliveries(direct, cycle), timeout=20)
                await add_agents(direct, 2)
            await wait_until(lambda: _cycles_with_deliveries(direct, 4), timeout=20)
            await wait_until(lambda: all_delivered(direct), timeout=20)
            # the fourth cycle's deliveries can be out before that cycle has ended
            status = await daemon.wait_status(lambda s: s["cycles"] >= 4)
            code, listed = await daemon.actl("deliveries", "--status", "delivered")
            errors = metric(await daemon.scrape(), 'cartd_poll_cycles_total{outcome="error"}')
            assert await daemon.terminate() == 0
        counts = await direct.deliveries.counts()
        await direct.close()
    log = daemon.log.read_text()
    assert "prepared statement" not in log and errors == 0, log[-2000:]
    assert status["database"] == "ok" and status["cycles"] >= 4
    assert counts["pending"] == 0 and counts["delivered"] == len(receiver.requests)
    assert code == 0 and len(listed) == counts["delivered"]


async def _cycles_with_deliveries(store: Store, n: int) -> bool:
    """Deliveries were made by at least `n` cycles (each writes them with its own time)."""
    return await store.pool.fetchval(
        "SELECT count(DISTINCT created_at) FROM cartd.deliveries") >= n
