"""What a failed database call means to an operator, and the daemon's view of its
database's health (README "The database")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import structlog

from cartd import notify
from cartd.db.pool import COMMAND_TIMEOUT

log = structlog.get_logger("cartd.db")

def one_line(text: str) -> str:
    """Text from outside (a receiver's reason phrase, a store's error message, an
    exception) as one printable line of at most 500 characters, as a row and a log line
    can hold it: it may carry a NUL, a lone surrogate or bytes that are not UTF-8, which
    PostgreSQL refuses."""
    return "".join(c if c.isprintable() else "\ufffd" for c in " ".join(text.split()))[:500]


# What a statement can raise: a database that is down, restarting or unreachable, or one
# that answers with an error (problem() says which).
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

# SQLSTATE classes and codes (PostgreSQL's appendix A) by what they mean to an operator.
_UNREACHABLE = ("08", "3D000", "53", "57P01", "57P02", "57P03")  # connection, no such
# database, out of connections or resources, shut down, starting up
_REFUSED = ("28", "42501")  # authentication failed, permission denied
_TIMED_OUT = ("57014", "55P03", "25P03")  # statement, lock or idle-in-transaction timeout


@dataclass(frozen=True, slots=True)
class DatabaseProblem:
    """What a failed database call means: `kind` is `unavailable` (cannot be reached),
    `permission` (refused), `timeout` or `query` (any other error the server gave)."""

    kind: str
    message: str
    sqlstate: str | None = None

    @property
    def event(self) -> str:
        """The log event that reports it."""
        return {"unavailable": "database_unavailable", "permission": "database_permission_denied",
                "timeout": "database_timeout", "query": "database_query_failed"}[self.kind]

    def __str__(self) -> str:
        label = {"unavailable": "unavailable", "permission": "permission denied",
                 "timeout": "timeout", "query": "query failed"}[self.kind]
        code = f" [{self.sqlstate}]" if self.sqlstate else ""
        return f"{label}{code}: {self.message}"


def refused_values(exc: BaseException) -> bool:
    """Whether the database (or asyncpg, encoding them) refused the values a statement
    was given (SQLSTATE class 22, data exception): the same values fail again."""
    return isinstance(exc, asyncpg.DataError)


def problem(exc: BaseException) -> DatabaseProblem:
    """The DatabaseProblem of an exception in DB_ERRORS, with the server's message."""
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else type(exc).__name__
    if isinstance(exc, TimeoutError):
        return DatabaseProblem("timeout", f"no answer within {COMMAND_TIMEOUT:g} s")
    if not isinstance(exc, asyncpg.PostgresError):
        return DatabaseProblem("unavailable", message)  # socket errors, a closed connection
    code = exc.sqlstate or ""
    for kind, codes in (("unavailable", _UNREACHABLE), ("permission", _REFUSED),
                        ("timeout", _TIMED_OUT)):
        if code.startswith(codes):
            return DatabaseProblem(kind, message, code)
    return DatabaseProblem("query", message, code or None)


class DatabaseHealth:
    """The daemon's view of its database: not connected yet, ok, unreachable (one problem
    for every activity), or what the last call of each activity (cycle, health,
    retention...) ran into. Any success proves it reachable again; `on_reachable` runs
    when it becomes so (what waited for the database goes then)."""

    def __init__(self, on_reachable: Callable[[], None] = lambda: None) -> None:
        self.on_reachable = on_reachable
        self.connected = False
        self.unreachable: DatabaseProblem | None = None
        self.problems: dict[str, DatabaseProblem] = {}  # by activity

    @property
    def reachable(self) -> bool:
        return self.connected and self.unreachable is None

    def text(self) -> str:
        """`ok`, or what is wrong (as /status shows it)."""
        if self.unreachable is not None:
            return str(self.unreachable)
        if not self.connected:
            return "not connected yet"
        return str(next(iter(self.problems.values()))) if self.problems else "ok"

    def failed(self, activity: str, exc: BaseException) -> DatabaseProblem:
        """Record what `activity` ran into; logged once, until it changes."""
        found = problem(exc)
        if found.kind == "unavailable":
            known, self.unreachable = self.unreachable, found
        else:
            known, self.problems[activity] = self.problems.get(activity), found
        if known != found:
            log.error(found.event, error=str(found), activity=activity)
            notify.notify(f"STATUS=database {found}")
        return found

    def succeeded(self, activity: str) -> None:
        """Clear what `activity` ran into."""
        was_reachable = self.reachable
        if self.unreachable is not None:
            log.info("database_recovered")
        self.connected = True
        self.unreachable = None
        self.problems.pop(activity, None)
        if not was_reachable:
            self.on_reachable()
