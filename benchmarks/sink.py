"""The webhook sink: an aiohttp server on 127.0.0.1 in a process of its own, so that it
never shares the measured event loop. It answers 200, checks the signature of every
100th request, and counts at GET /stats."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

from common import HERE, ROOT

VERIFY_EVERY = 100  # the sink checks the signature of every 100th request


def sink_main(secret: str) -> None:
    """`run.py --sink SECRET`: answer 200 to every POST; print the port; GET /stats counts."""
    from aiohttp import web

    from cartd.signing import SignatureError, Signer

    signer = Signer((secret,))
    stats = {"requests": 0, "verified": 0, "bad_signatures": 0, "unsigned": 0}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        stats["requests"] += 1
        if stats["requests"] % VERIFY_EVERY == 1:
            if "webhook-signature" not in request.headers:
                stats["unsigned"] += 1
            else:
                try:
                    signer.verify(dict(request.headers), body)
                    stats["verified"] += 1
                except SignatureError:
                    stats["bad_signatures"] += 1
        return web.Response(status=200)

    async def get_stats(_: web.Request) -> web.Response:
        return web.json_response(stats)

    async def main() -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/webhook", hook)
        app.router.add_get("/stats", get_stats)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        # Stop when the parent goes away, whatever happens to it.
        loop.add_reader(sys.stdin.fileno(), stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


class Sink:
    """The sink in its process (`run.py --sink`), checking signatures made with `secret`."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "run.py"), "--sink", secret],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(ROOT),
        )
        line = self.proc.stdout.readline()
        if not line.strip():
            raise RuntimeError("the sink did not start")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}/webhook"

    async def stats(self) -> dict[str, int]:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{self.port}/stats") as r:
            return await r.json()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
