"""Debian's PgBouncer (package `pgbouncer`) in transaction mode in front of the test
PostgreSQL, for the tests and the benchmark: its own ini and auth file in a temporary
directory, listening on a free port of 127.0.0.1, stopped by its pid at the end."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from harness import free_port

PGBOUNCER = "/usr/sbin/pgbouncer"


def missing() -> str | None:
    """Why PgBouncer cannot run here, or None."""
    if not os.access(PGBOUNCER, os.X_OK):
        return f"{PGBOUNCER} is not installed (Debian package pgbouncer)"
    return None


def _upstream(dsn: str) -> tuple[str, int, str, str]:
    """host (or socket directory), port, user, password of a postgresql:// DSN."""
    parts = urlsplit(dsn)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    host = query.get("host") or parts.hostname or "127.0.0.1"
    return host, parts.port or 5432, parts.username or "postgres", parts.password or ""


def _run_as(dsn: str) -> pwd.struct_passwd:
    """Who PgBouncer runs as when we are root: the owner of the server's socket
    directory (often the only one who may enter it), else nobody."""
    host = _upstream(dsn)[0]
    if host.startswith("/"):
        return pwd.getpwuid(os.stat(host).st_uid)
    return pwd.getpwnam("nobody")


def _ini(folder: Path, dsn: str, port: int, pool_size: int) -> str:
    host, upstream_port, user, password = _upstream(dsn)
    (folder / "users.txt").write_text(f'"{user}" "{password}"\n')
    return "\n".join([
        "[databases]",
        f"* = host={host} port={upstream_port} user={user}"
        + (f" password={password}" if password else ""),
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {folder / 'users.txt'}",
        "pool_mode = transaction",
        "server_round_robin = 1",  # the idle server connection used longest ago goes next
        f"default_pool_size = {pool_size}",
        "max_client_conn = 500",
        "server_reset_query =",
        "query_wait_timeout = 30",
        f"pidfile = {folder / 'pgbouncer.pid'}",
        "",
    ])


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"pgbouncer did not listen within {timeout}s: {log.read_text()[-2000:]}")


@contextmanager
def pgbouncer(dsn: str, *, pool_size: int = 4) -> Iterator[str]:
    """PgBouncer in transaction mode in front of the server of `dsn`; yields the DSN of
    the same database through it. `pool_size` server connections per database, fewer
    than cartd's pool, so that its sessions really change server connections."""
    folder = Path(tempfile.mkdtemp(prefix="cartd-pgb-", dir="/tmp"))
    log = folder / "pgbouncer.log"
    user = []
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        owner = _run_as(dsn)
        user = ["-u", owner.pw_name]
        os.chown(folder, owner.pw_uid, -1)
    proc = None
    try:
        for _ in range(5):  # the free port may be taken between the probe and the bind
            port = free_port()  # PgBouncer cannot be given port 0
            (folder / "pgbouncer.ini").write_text(_ini(folder, dsn, port, pool_size))
            with log.open("ab") as out:
                proc = subprocess.Popen([PGBOUNCER, *user, str(folder / "pgbouncer.ini")],
                                        stdout=out, stderr=subprocess.STDOUT)
            try:
                _wait_listening(port, proc, log, timeout=10)
                break
            except RuntimeError:
                if "Address already in use" not in log.read_text():
                    raise
        parts = urlsplit(dsn)
        _, _, db_user, password = _upstream(dsn)
        auth = f"{db_user}:{password}@" if password else f"{db_user}@"
        yield f"postgresql://{auth}127.0.0.1:{port}{parts.path or '/postgres'}"
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
