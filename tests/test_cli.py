"""The command line as a user runs it: exit codes, one-line errors, migrate, seed, demo."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import yaml

from harness import ROOT, SLUG, cli, free_port


def empty_config(tmp_path: Path) -> str:
    """A config file of all defaults (`cli` runs in the repository, beside its cartd.yaml)."""
    path = tmp_path / "empty.yaml"
    path.write_text("")
    return str(path)


def test_check_config_names_a_misspelt_key_and_exits_2(tmp_path: Path):
    path = tmp_path / "cartd.yaml"
    path.write_text("webhook:\n  url: http://127.0.0.1:9/hook\n  timout: 5s\n")
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["cartd: webhook.timout: unknown key"]


def test_check_config_accepts_the_shipped_file():
    result = cli("--config", str(ROOT / "cartd.yaml"), "check-config")
    assert result.returncode == 0, result.stderr


def test_bad_values_and_bad_usage_exit_2_with_one_line(tmp_path: Path):
    path = tmp_path / "cartd.yaml"
    path.write_text("webhook:\n  timeout: 0\n")
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == "cartd: webhook.timeout: must be a duration > 0"
    for args in (["nonsense"], ["seed-demo", "--agents", "many"], ["demo", "--interval", "0"]):
        result = cli(*args)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_unreachable_database_is_one_line_and_exit_1(tmp_path: Path):
    result = cli("migrate", env={"CARTD_DATABASE_DSN": "postgresql://cartd:hunter2@127.0.0.1:9/x",
                                   "CARTD_CONFIG": empty_config(tmp_path)})
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hunter2" not in result.stderr


def test_a_bad_dsn_is_a_config_error_naming_the_key_and_not_the_password(tmp_path: Path):
    for command, dsn in (("migrate", "postgresql://cartd:hunter2@db:notaport/x"),
                         ("run", "postgresql://cartd:hunter2@127.0.0.1:99999/x")):
        result = cli(command, env={"CARTD_DATABASE_DSN": dsn,
                                   "CARTD_CONFIG": empty_config(tmp_path)})
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [
            "cartd: database.dsn (from CARTD_DATABASE_DSN): the port must be a number"
            " from 1 to 65535"]


def test_a_missing_config_named_by_the_environment_is_an_error(tmp_path: Path):
    """Like a missing --config: only the implicit ./cartd.yaml may be absent."""
    missing = tmp_path / "nonexistent.yaml"
    result = cli("check-config", env={"CARTD_CONFIG": str(missing)})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"cartd: config: {missing} does not exist"]
    ctl = cli("ctl", "status", env={"CARTD_CONFIG": str(missing)})  # no socket to guess
    assert ctl.returncode == 2 and "does not exist" in ctl.stderr
    given = cli("ctl", "--socket", str(tmp_path / "absent.sock"), "status",
                env={"CARTD_CONFIG": str(missing)})  # --socket: the file is not read
    assert given.returncode == 1 and "cannot reach the daemon" in given.stderr


def test_listen_problems_name_their_key(dsn: str, tmp_path: Path):
    path = tmp_path / "cartd.yaml"
    path.write_text(yaml.safe_dump({"metrics": {"listen": "127.0.0.1:99999"}}))
    checked = cli("--config", str(path), "check-config")
    assert checked.returncode == 2
    assert checked.stderr.splitlines() == [
        'cartd: metrics.listen: must be HOST:PORT with a port from 0 to 65535, or ""']
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    socket_path = blocker / "ctl.sock"  # its folder would be a file
    settings = {"state_dir": str(tmp_path / "var"), "database": {"dsn": dsn},
                "polling": {"enabled": False}, "shutdown_timeout": "2s"}
    for section, expected in (
            ({"metrics": {"listen": "192.0.2.1:9464"}},  # TEST-NET-1: no such local address
             "cartd: metrics.listen 192.0.2.1:9464: "),
            ({"control": {"socket": str(socket_path)}}, f"cartd: control.socket {socket_path}: ")):
        path.write_text(yaml.safe_dump({**settings, "control": {
            "socket": str(tmp_path / "ctl.sock")}, "metrics": {
            "listen": f"127.0.0.1:{free_port()}"}, **section}))
        result = cli("--config", str(path), "run", timeout=60)
        assert result.returncode == 1, result.stderr
        [line] = [line for line in result.stderr.splitlines() if line.startswith("cartd: ")]
        assert line.startswith(expected), line
        assert "Traceback" not in result.stderr


async def test_concurrent_migrations_are_safe_and_idempotent(dsn: str, tmp_path: Path):
    env = {"CARTD_DATABASE_DSN": dsn, "CARTD_CONFIG": empty_config(tmp_path)}
    runs = [asyncio.to_thread(cli, "migrate", "--app-tables", env=env) for _ in range(4)]
    results = await asyncio.gather(*runs)
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
    assert sum("applied" in r.stdout for r in results) == 1
    again = cli("migrate", env=env)
    assert again.returncode == 0 and again.stdout.strip() == "up to date"


async def test_seed_demo_inserts_agents_half_of_which_are_skipped(dsn: str, tmp_path: Path):
    env = {"CARTD_DATABASE_DSN": dsn, "CARTD_CONFIG": empty_config(tmp_path)}
    assert cli("migrate", "--app-tables", env=env).returncode == 0
    result = cli("seed-demo", "--agents", "10", env=env)
    assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(dsn)
    try:
        total = await conn.fetchval("SELECT count(*) FROM company_agents")
        polled = await conn.fetchval(
            "SELECT count(*) FROM company_agents WHERE is_active AND template_slug = $1", SLUG)
        platforms = await conn.fetch("SELECT DISTINCT platform FROM agent_integrations")
    finally:
        await conn.close()
    assert (total, polled) == (10, 5)
    assert {r["platform"] for r in platforms} == {"shopify", "woocommerce", "custom"}


async def test_demo_shows_signed_webhooks_from_all_three_platforms(store, dsn: str,
                                                                   tmp_path: Path):
    """... always from its embedded PostgreSQL: a configured database is left alone."""
    config = tmp_path / "cartd.yaml"
    config.write_text(yaml.safe_dump({"metrics": {"listen": ""},
                                      "database": {"dsn": dsn, "pooler": "transaction"}}))
    result = await asyncio.to_thread(
        cli, "--config", str(config), "demo", "--cycles", "2", "--interval", "1",
        "--state-dir", str(tmp_path / "state"), env={"CARTD_DATABASE_DSN": dsn}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert await store.pool.fetchval("SELECT count(*) FROM companies") == 0
    assert await store.pool.fetchval("SELECT count(*) FROM cartd.deliveries") == 0
    lines = result.stdout.splitlines()
    arrivals = [line for line in lines if line.strip().startswith("<- msg_")]
    assert arrivals and all(line.endswith("signature ok") for line in arrivals)
    for platform in ("shopify", "woocommerce", "custom"):
        assert any(f" {platform} " in line for line in arrivals), platform
    assert any(line.startswith("cycle 2:") for line in lines)
    assert any(line.startswith("summary: 2 cycles") for line in lines)


def test_ctl_finds_the_socket_without_reading_secret_files(tmp_path: Path):
    config = tmp_path / "cartd.yaml"
    config.write_text(yaml.safe_dump({
        "control": {"socket": str(tmp_path / "absent.sock")},
        "webhook": {"secret_file": "/run/credentials/cartd.service/unreadable"},
    }))
    result = cli("--config", str(config), "ctl", "status")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cartd: cannot reach the daemon at {tmp_path / 'absent.sock'}: ")


def test_check_config_no_secrets_skips_only_the_secret_files(tmp_path: Path):
    """What systemd's ExecReload= runs: it cannot see the service's credentials."""
    config = tmp_path / "cartd.yaml"
    absent = "/run/credentials/cartd.service/webhook-secret"
    config.write_text(yaml.safe_dump({"webhook": {"secret_file": absent}}))
    full = cli("--config", str(config), "check-config")
    assert full.returncode == 2 and f"webhook.secret_file: cannot read {absent}" in full.stderr
    assert cli("--config", str(config), "check-config", "--no-secrets").returncode == 0
    config.write_text(yaml.safe_dump({"webhook": {"secret_file": absent, "timeout": 0}}))
    broken = cli("--config", str(config), "check-config", "--no-secrets")
    assert broken.returncode == 2 and "webhook.timeout" in broken.stderr
