"""Named SQL queries, loaded from `.sql` files (docs/architecture.md "SQL").

A file holds sections, each opened by a line `-- name: <name>`; the comment lines that
follow it say what the query does. Parameters are named, `:agent_ids`, and compiled once,
when the file is loaded, into asyncpg's `$1`, `$2`, ... in the order they first appear;
the same name is the same parameter wherever it recurs. Casts (`::jsonb`), string
literals, quoted names, comments and dollar-quoted bodies are left as they are.

    SQL = load("cartd.db", "sql/agents.sql")
    rows = await SQL["claim"].fetch(pool, slug=slug, limit=100)   # a pool or a connection
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

Executor = asyncpg.Pool | asyncpg.Connection

_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)[ \t]*$", re.MULTILINE)
# What the compiler steps over whole (strings, names, comments, dollar quotes, casts),
# and the named parameters it replaces; a positional `$n` is refused (one style).
_TOKENS = re.compile(
    r"""(?P<skip>'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/"""
    r"""|\$\$.*?\$\$|\$(?P<tag>[A-Za-z_]\w*)\$.*?\$(?P=tag)\$|::)"""
    r"""|:(?P<name>[A-Za-z_]\w*)|(?P<positional>\$\d+)""",
    re.DOTALL,
)


class QueryError(ValueError):
    """A `.sql` file that does not follow the rules above, or a call without its values."""


@dataclass(frozen=True, slots=True)
class Query:
    """One named query: its SQL with `$n` placeholders and the names of its parameters,
    `$1` first."""

    name: str
    sql: str
    params: tuple[str, ...]

    def args(self, **values: Any) -> tuple[Any, ...]:
        """The positional arguments of a call, from the values by parameter name."""
        if len(values) != len(self.params):
            missing = set(self.params) - set(values)
            extra = set(values) - set(self.params)
            raise QueryError(f"query {self.name}: missing {sorted(missing)}, unknown {sorted(extra)}")
        try:
            return tuple([values[name] for name in self.params])
        except KeyError as exc:
            raise QueryError(f"query {self.name}: no value for :{exc.args[0]}") from None

    async def execute(self, on: Executor, **values: Any) -> str:
        return await on.execute(self.sql, *self.args(**values))

    async def fetch(self, on: Executor, **values: Any) -> list[asyncpg.Record]:
        return await on.fetch(self.sql, *self.args(**values))

    async def fetchrow(self, on: Executor, **values: Any) -> asyncpg.Record | None:
        return await on.fetchrow(self.sql, *self.args(**values))

    async def fetchval(self, on: Executor, **values: Any) -> Any:
        return await on.fetchval(self.sql, *self.args(**values))

    async def executemany(self, on: Executor, rows: Iterable[Sequence[Any]]) -> None:
        """One execution per row; each row holds the values in the order of `params`."""
        await on.executemany(self.sql, rows)


def compile_query(name: str, text: str) -> Query:
    """`text` with its `:name` parameters numbered."""
    params: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group("skip") is not None:
            return match.group(0)
        if match.group("positional") is not None:
            raise QueryError(f"query {name}: {match.group(0)}: name the parameter (:name)")
        param = match.group("name")
        if param not in params:
            params.append(param)
        return f"${params.index(param) + 1}"

    return Query(name, _TOKENS.sub(number, text).strip(), tuple(params))


def parse(text: str, source: str = "<sql>") -> dict[str, Query]:
    """The queries of one file's text, by name."""
    headers = list(_HEADER.finditer(text))
    preamble = text[: headers[0].start()] if headers else text
    if not headers or any(line.strip() and not line.startswith("--")
                          for line in preamble.splitlines()):
        raise QueryError(f"{source}: SQL outside a `-- name:` section")
    queries: dict[str, Query] = {}
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        name = header.group(1)
        if name in queries:
            raise QueryError(f"{source}: query {name} is defined twice")
        body = text[header.end(): following.start() if following else len(text)]
        if not body.strip():
            raise QueryError(f"{source}: query {name} is empty")
        queries[name] = compile_query(name, body)
    return queries


def load(package: str, filename: str) -> dict[str, Query]:
    """The queries of a `.sql` file shipped in `package`, by name (read once, at import)."""
    text = (resources.files(package) / filename).read_text()
    return parse(text, f"{package}/{filename}")
