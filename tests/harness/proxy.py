"""A database that goes away: a TCP front for the test PostgreSQL that a test takes down
and brings back."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from harness.common import free_port


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


def proxied(dsn: str) -> tuple[Proxy, str]:
    """A Proxy (down) in front of `dsn`'s server, and the DSN that goes through it."""
    parts = urlsplit(dsn)
    query = dict(p.split("=", 1) for p in parts.query.split("&") if p)
    host = query.pop("host", parts.hostname)
    if host and host.startswith("/"):
        target = ("unix", f"{host}/.s.PGSQL.{parts.port or 5432}")
    else:
        target = ("tcp", host or "127.0.0.1", parts.port or 5432)
    user = parts.username or "postgres"
    auth = f"{user}:{parts.password}@" if parts.password else f"{user}@"
    proxy = Proxy(target)
    return proxy, f"postgresql://{auth}127.0.0.1:{proxy.port}{parts.path}"
