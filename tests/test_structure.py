"""The shape of cartd/ that docs/architecture.md describes: no import cycle, no function
over 50 lines, rooms that keep to their imports, every SQL query in a `.sql` file and
used, comments that point to the project's own docs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from cartd.db.queries import parse

PACKAGE = Path(__file__).resolve().parent.parent / "cartd"
MAX_FUNCTION_LINES = 50
# Rooms that must not know about others (docs/architecture.md "Rooms").
FORBIDDEN = {
    "cartd.model": ("cartd",),  # imports nothing of cartd
    "cartd.payload": ("cartd.sources", "cartd.db", "cartd.cycle"),  # sending knows no fetching
    "cartd.control": ("cartd.daemon",),  # a Protocol, not the daemon
    "cartd.db": ("cartd.sources", "cartd.cycle", "cartd.daemon", "cartd.polling"),
    "cartd.sources": ("cartd.cycle", "cartd.daemon", "cartd.payload", "cartd.polling"),
}
# A string that starts like a statement: SQL belongs in a .sql file.
SQL_TEXT = re.compile(r"^\s*(SELECT\s|INSERT\s+INTO\s|UPDATE\s+\S+\s+SET\s|DELETE\s+FROM\s"
                      r"|WITH\s+\w+\s+AS\s*\(|CREATE\s|ALTER\s|DROP\s)")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The cartd modules a module imports (anywhere in it, `if TYPE_CHECKING:` too):
    `import a.b` is a.b, `from a import b` is a and, when b is a module, a.b."""
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            deps.add(node.module)
            deps |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {d for d in deps if d in known}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            found.append(path[path.index(name):] + [name])
            return
        if name in done:
            return
        done.add(name)
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])

    for name in sorted(graph):
        visit(name, [])
    return found


def test_no_module_of_cartd_imports_itself_back_through_others():
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    assert cycles(graph) == []


def test_rooms_keep_to_their_imports():
    known = modules()
    wrong = []
    for name, path in known.items():
        for room, banned in FORBIDDEN.items():
            if name == room or name.startswith(room + "."):
                wrong += [f"{name} imports {dep}" for dep in sorted(imports(path, known))
                          if any(dep == b or dep.startswith(b + ".") for b in banned)
                          and not (dep == room or dep.startswith(room + "."))]
    assert wrong == []


def test_no_function_is_longer_than_50_lines():
    long = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
            f" ({node.end_lineno - node.lineno + 1} lines)"
            for path in modules().values() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_no_sql_is_written_in_python():
    found = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
             for path in modules().values() for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and SQL_TEXT.match(node.value)]
    assert found == []


def test_every_named_query_is_used_and_every_query_used_exists():
    """A module loads its file as `SQL = load(package, file)` and runs `SQL["name"]`."""
    problems = []
    for path in modules().values():
        tree = ast.parse(path.read_text())
        loaded = [node.value for node in tree.body if isinstance(node, ast.Assign)
                  and [getattr(t, "id", None) for t in node.targets] == ["SQL"]]
        if not loaded:
            continue
        package, filename = (arg.value for arg in loaded[0].args)
        sql = PACKAGE.parent.joinpath(*package.split("."), filename)
        defined = set(parse(sql.read_text(), str(sql)))
        used = {node.slice.value for node in ast.walk(tree) if isinstance(node, ast.Subscript)
                and getattr(node.value, "id", None) == "SQL"
                and isinstance(node.slice, ast.Constant)}
        problems += [f"{sql.name}: {name} is never run" for name in sorted(defined - used)]
        problems += [f"{path.name}: no query {name}" for name in sorted(used - defined)]
    assert problems == []


def test_every_sql_file_is_loaded_by_a_module():
    loaded = set()
    for path in modules().values():
        loaded |= set(re.findall(r'load\("[\w.]+", "([\w/]+\.sql)"\)', path.read_text()))
    files = {str(p.relative_to(p.parent.parent if p.parent.name == "sql" else p.parent))
             for p in PACKAGE.rglob("*.sql") if p.parent.name != "migrations"}
    assert {f for f in files if not any(f.endswith(name) for name in loaded)} == set()


def _project_texts() -> list[Path]:
    root = PACKAGE.parent
    kinds = ("*.py", "*.sql", "*.md", "*.yml", "*.yaml", "*.json", "*.service", "*.toml")
    return [path for folder in ("cartd", "tests", "docs", "monitoring", "systemd", "benchmarks")
            for kind in kinds for path in (root / folder).rglob(kind)
            if "fixtures" not in path.parts] + [root / "README.md", root / "cartd.yaml"]


def test_comments_point_to_the_projects_own_docs():
    pointing = [f"{path.relative_to(PACKAGE.parent)}:{number}"
                for path in _project_texts()
                for number, line in enumerate(path.read_text().splitlines(), 1)
                if re.search(r"SPEC(\.md)? ?(§|section)", line)]
    assert pointing == []
