"""Command line: arguments in, calls out, one-line errors and the exit codes (README
"Commands"): it parses and dispatches."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import asyncpg

from cartd import __version__, embedded, logs
from cartd.config import Config, ConfigError, load, resolve_path
from cartd.control import CannotListen
from cartd.db import DB_ERRORS, Store, problem

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


class DatabaseFailed(Exception):
    """A command's database work failed; the message says how (cartd.db.problem)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cartd", description="Finds abandoned carts and delivers them, "
                     "signed and durably, to a recovery webhook.")
    parser.add_argument("--version", action="version", version=f"cartd {__version__}")
    config_help = ("config file (default: $CARTD_CONFIG, /etc/cartd/cartd.yaml if it exists,"
                   " else ./cartd.yaml)")
    parser.add_argument("--config", help=config_help)
    common = _Parser(add_help=False)
    common.add_argument("--config", help=config_help, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                     metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="the daemon, in the foreground")
    check = commands.add_parser("check-config", parents=[common], help="validate the config")
    check.add_argument("--no-secrets", action="store_true",
                       help="do not read database.dsn_file and webhook.secret_file (systemd's"
                            " ExecReload= cannot see the service's credentials)")
    migrate = commands.add_parser("migrate", parents=[common], help="apply migrations")
    migrate.add_argument("--app-tables", action="store_true",
                         help="also create the application tables (new installs, demos)")
    seed = commands.add_parser("seed-demo", parents=[common], help="insert demo companies, agents and integrations")
    seed.add_argument("--agents", type=_positive_int, default=20)
    receiver = commands.add_parser("receiver", parents=[common], help="a webhook receiver that verifies signatures")
    receiver.add_argument("--listen", default="127.0.0.1:8787", type=_host_port)
    receiver.add_argument("--secret", default=None, help="whsec_... (default: webhook.secret)")
    _ctl_parser(commands.add_parser("ctl", parents=[common], help="talk to a running daemon"))
    demo = commands.add_parser("demo", parents=[common], help="the whole system on one machine")
    demo.add_argument("--agents", type=_positive_int, default=12)
    demo.add_argument("--cycles", type=_positive_int, default=None,
                      help="stop after N cycles (default: run until Ctrl-C)")
    demo.add_argument("--interval", type=_interval, default=10.0, help="seconds between cycles")
    demo.add_argument("--state-dir", default=None,
                      help="keep the embedded database here (default: a temporary directory)")
    return parser


def _ctl_parser(ctl: argparse.ArgumentParser) -> None:
    """`cartd ctl` and its commands; `--json` goes before or after the command."""
    ctl.add_argument("--socket", default=None, help="control socket (default: control.socket)")
    json_help = "print the JSON answer (the default when stdout is not a terminal)"
    ctl.add_argument("--json", action="store_true", help=json_help)
    output = _Parser(add_help=False)
    output.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=json_help)
    actions = ctl.add_subparsers(dest="action", required=True, parser_class=_Parser,
                                 metavar="CMD")

    def action(name: str, what: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, parents=[output], help=what)

    action("status", "the daemon's state")
    start = action("start", "enable polling")
    start.add_argument("--interval", type=_interval, default=None, help="seconds between cycles")
    action("stop", "disable polling")
    action("run-once", "poll every matching agent now")
    action("reload", "reload the config file")
    deliveries = action("deliveries", "list deliveries, newest first")
    deliveries.add_argument("--status", choices=("pending", "delivered", "dead", "withdrawn"))
    deliveries.add_argument("--limit", type=_positive_int, default=50)
    replay = action("replay", "replay one delivery, or all dead ones")
    replay.add_argument("id", nargs="?", help="the delivery (webhook) id")
    replay.add_argument("--status", choices=("dead",), help="replay every dead delivery")
    replay.add_argument("--since", default=None, help="only those created since this ISO time")
    preview = action("preview", "poll now and show what would be delivered, recording nothing")
    preview.add_argument("--agent", default=None, help="only this agent (id)")
    preview.add_argument("--integration", default=None, help="only this integration (id)")
    integrations = action("integrations", "the health of each store")
    integrations.add_argument("--failing", action="store_true", help="only failing ones")
    integrations.add_argument("--limit", type=_positive_int, default=50)
    forget = action("forget", "erase one customer from everything cartd keeps")
    forget.add_argument("--email", default=None)
    forget.add_argument("--customer-id", default=None)
    forget.add_argument("--integration-id", default=None)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 1 and 86400 seconds")
    return value


def _host_port(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return text


def _load(args: argparse.Namespace, *, secrets: bool = True) -> tuple[Config, Path]:
    path, missing_ok = resolve_path(args.config)
    return load(path, missing_ok=missing_ok, secrets=secrets), path


async def _with_store(config: Config, work: Callable[[Store], Awaitable[Any]]) -> Any:
    async with embedded.database(config.database.dsn, config.state_dir) as dsn:
        try:
            store = await Store.connect(dsn, 1, 2, pooler=config.database.pooler)
            try:
                return await work(store)
            finally:
                await store.close()
        except DB_ERRORS as exc:
            raise DatabaseFailed(f"database {problem(exc)}") from None


def _cmd_check_config(args: argparse.Namespace) -> int:
    _, path = _load(args, secrets=not args.no_secrets)
    print(f"{path}: ok")
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    config, _ = _load(args)

    async def work(store: Store) -> list[str]:
        return await store.maintenance.migrate(app_tables=args.app_tables)

    applied = asyncio.run(_with_store(config, work))
    print("applied: " + ", ".join(applied) if applied else "up to date")
    return EXIT_OK


def _cmd_seed_demo(args: argparse.Namespace) -> int:
    from cartd.demo import seed

    config, _ = _load(args)

    async def work(store: Store) -> int:
        return await seed(store, args.agents, config.polling.template_slug)

    polled = asyncio.run(_with_store(config, work))
    print(f"seeded {args.agents} agents ({polled} abandoned-cart agents that cartd will poll)")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from cartd.daemon import Daemon, tune_gc

    path, missing_ok = resolve_path(args.config)
    config = load(path, missing_ok=missing_ok)
    logs.configure(config.logging.level, config.logging.format)
    tune_gc()
    asyncio.run(Daemon(config, path, config_missing_ok=missing_ok).run())
    return EXIT_OK


def _cmd_ctl(args: argparse.Namespace) -> int:
    from cartd import ctl, ctl_text

    try:
        status, data = ctl.run(args)
    except ctl.BadRequest as exc:
        raise UsageError(str(exc)) from None
    except ctl.Unreachable as exc:
        print(f"cartd: cannot reach the daemon at {exc.socket_path}: {_one_line(exc.cause)}",
              file=sys.stderr)
        return EXIT_RUNTIME
    ctl_text.show(args.action, data, ok=status < 400,
                  as_json=args.json or not sys.stdout.isatty())
    if status == 400:  # the daemon refused the request as invalid: bad usage
        return EXIT_USAGE
    return EXIT_OK if status < 400 else EXIT_RUNTIME


def _cmd_receiver(args: argparse.Namespace) -> int:
    from cartd.receiver import serve

    secret = args.secret
    if secret is None:
        config, _ = _load(args)
        secret = config.webhook.secret or None
    if secret:
        from cartd.signing import decode_secret

        try:
            decode_secret(secret)
        except ValueError as exc:
            raise UsageError(f"--secret: {exc}") from None
    try:
        asyncio.run(serve(args.listen, secret))
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from cartd.daemon import tune_gc
    from cartd.demo import run_demo

    config, _ = _load(args, secrets=False)  # its own database and webhook secret
    logs.configure("warning", "console")
    tune_gc()
    try:
        return asyncio.run(run_demo(config, agents=args.agents, cycles=args.cycles,
                                    interval=args.interval, state_dir=args.state_dir))
    except KeyboardInterrupt:
        return EXIT_OK


COMMANDS = {
    "run": _cmd_run,
    "check-config": _cmd_check_config,
    "migrate": _cmd_migrate,
    "seed-demo": _cmd_seed_demo,
    "ctl": _cmd_ctl,
    "receiver": _cmd_receiver,
    "demo": _cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"cartd: {exc} (see cartd --help)", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"cartd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (embedded.EmbeddedUnavailable, CannotListen, DatabaseFailed) as exc:
        print(f"cartd: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"cartd: database {problem(exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as exc:
        print(f"cartd: {_one_line(exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_OK


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
