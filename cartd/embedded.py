"""The embedded PostgreSQL (pgserver) used when `database.dsn` is empty."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any


class EmbeddedUnavailable(RuntimeError):
    pass


def start(state_dir: str) -> tuple[str, Any]:
    """Start (or join) the embedded server under `state_dir`; returns its DSN and handle."""
    try:
        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR (root shells, containers) platformdirs warns on stderr
            # at import and pgserver keeps its lock under /tmp, which serves.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            import pgserver
    except ImportError:
        raise EmbeddedUnavailable(
            "database.dsn is empty and the embedded PostgreSQL is not installed:"
            " pip install 'cartd[embedded]' or set database.dsn"
        ) from None
    data = Path(state_dir).resolve() / "pgdata"
    data.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(data, cleanup_mode="stop")
    except Exception as exc:  # pgserver raises plain exceptions with its log attached
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmbeddedUnavailable(f"embedded PostgreSQL under {data} failed to start: {first}") from None
    return server.get_uri(), server


@contextlib.asynccontextmanager
async def database(dsn: str, state_dir: str) -> AsyncIterator[str]:
    """`dsn`; when it is empty, the DSN of the embedded server under `state_dir`, which
    runs for the block."""
    if dsn:
        yield dsn
        return
    uri, server = await asyncio.to_thread(start, state_dir)
    try:
        yield uri
    finally:
        await asyncio.to_thread(server.cleanup)
