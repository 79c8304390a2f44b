"""How `cartd ctl` shows the daemon's answers: readable text on a terminal (a status in
the manner of `systemctl status`, tables), the JSON itself otherwise or with `--json`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

GREEN, RED, YELLOW, BOLD, RESET = "\033[32m", "\033[31m", "\033[33m", "\033[1m", "\033[0m"


def show(action: str, data: Any, *, ok: bool, as_json: bool) -> None:
    """Print the answer to `action`: JSON for scripts, text for people; an error answer
    on a terminal is one line on stderr."""
    if as_json:
        print(json.dumps(data, indent=2))
        return
    if not ok:
        message = data.get("error") if isinstance(data, dict) else data
        print(f"cartd: {message}", file=sys.stderr)
        return
    print(RENDER.get(action, _status)(data))


# --- pieces ---------------------------------------------------------------------------


def _time(value: str | None) -> str:
    """An ISO time from the API as `2026-11-23 12:00:05 UTC`; `-` when there is none."""
    if not value:
        return "-"
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(value: str | None, now: datetime | None = None) -> str:
    if not value:
        return ""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if seconds < 0:
        return ""
    parts = [(seconds // 86400, "d"), (seconds % 86400 // 3600, "h"),
             (seconds % 3600 // 60, "min"), (seconds % 60, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n][:2] or ["0s"]
    return f" ({' '.join(shown)} ago)"


def _seconds(value: float) -> str:
    return f"{value:g}s" if value < 60 or value % 60 else f"{value / 60:g}min"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns as wide as their widest cell, two spaces apart, headers in bold."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = [BOLD + "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip() + RESET]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _fields(pairs: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in pairs)
    return "\n".join(f"{name.rjust(width)}: {value}" for name, value in pairs)


# --- answers ----------------------------------------------------------------------------


def cycle_line(cycle: dict[str, Any] | None) -> str:
    """A cycle summary in one line."""
    if not cycle:
        return "none yet"
    value = ", ".join(f"{v:g} {c}" for c, v in sorted(cycle.get("recovery_value", {}).items()))
    line = (f"{_time(cycle['started_at'])}, {cycle['duration_seconds']:g}s:"
            f" {cycle['agents_found']} agents, {cycle['integrations_processed']} stores,"
            f" {cycle['carts_found']} carts ({cycle['carts_new']} new"
            f"{', ' + value if value else ''}), {cycle['deliveries_enqueued']} webhooks queued,"
            f" {cycle['integration_errors']} store errors")
    if "deliveries_succeeded" in cycle:
        line += (f"; {cycle['deliveries_succeeded']} delivered,"
                 f" {cycle['deliveries_failed']} failed on the first attempt")
    return line


def _status(data: dict[str, Any]) -> str:
    running = data["state"] == "running"
    healthy = data["database"] == "ok" and not data["config_error"]
    dot = (GREEN if healthy else RED if not running else YELLOW) + "●" + RESET
    state = (f"{GREEN}running{RESET}, polling every {_seconds(data['interval_seconds'])}"
             if running else f"{YELLOW}stopped{RESET} (polling disabled)")
    counts = data.get("deliveries")
    deliveries = (f"{counts['pending']} pending, {counts['dead']} dead,"
                  f" {counts['delivered']} delivered" if counts else "unknown")
    database = (data["database"] if data["database"] == "ok"
                else f"{RED}{data['database']}{RESET}")
    config_error = (f"{RED}{data['config_error']}{RESET}" if data["config_error"] else "none")
    head = f"{dot} cartd {data['version']} - {state}"
    return head + "\n" + _fields([
        ("Instance", data["instance_id"]),
        ("Started", _time(data["started_at"]) + _ago(data["started_at"])),
        ("Cycles", str(data["cycles"])),
        ("Last cycle", cycle_line(data["last_cycle"])),
        ("Deliveries", deliveries),
        ("Database", database),
        ("Config", f"{data['config_path'] or '(defaults)'},"
                   f" loaded {_time(data['config_loaded_at'])}"),
        ("Config error", config_error),
    ])


def _deliveries(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no deliveries"
    return table(
        ["ID", "STATUS", "TYPE", "CARTS", "ATTEMPTS", "LAST", "NEXT ATTEMPT", "CREATED"],
        [[r["id"], r["status"], r["type"].removeprefix("abandoned_cart."), r["carts"],
          r["attempts"], r["last_error"] or r["last_status"],
          _time(r["next_attempt_at"]) if r["status"] == "pending" else None,
          _time(r["created_at"])] for r in rows])


def _integrations(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no integrations"
    return table(
        ["ID", "AGENT", "PLATFORM", "MODE", "LAST POLL", "LAST SUCCESS", "FAILURES", "LAST ERROR"],
        [[r["id"], r["agent_id"], r["platform"], r["mode"], _time(r["last_polled_at"]),
          _time(r["last_success_at"]), r["consecutive_failures"], r["last_error"]]
         for r in rows])


def _preview(data: dict[str, Any]) -> str:
    lines = [f"Preview at {_time(data['generated_at'])} (nothing recorded):"
             f" {data['agents_found']} agents, {data['carts_kept']} carts would be delivered"
             f" in {data['deliveries']} webhooks, {data['carts_filtered']} filtered out"]
    for entry in data["integrations"]:
        lines.append("")
        lines.append(f"{BOLD}{entry['platform']} {entry['integration_id']}{RESET}"
                     f" (agent {entry['agent_id']}, {entry['mode'] or '?'})")
        if entry["error"]:
            lines.append(f"  {RED}failed: {entry['error']}{RESET}")
            continue
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(entry["filtered_by_reason"].items()))
        lines.append(f"  {entry['carts_fetched']} carts fetched: {entry['carts_kept']} kept,"
                     f" {entry['carts_filtered']} filtered out{' (' + reasons + ')' if reasons else ''}")
        for sent in entry["payloads"]:
            lines.append(f"  webhook: {sent['carts']} carts, {sent['total_value']:g}"
                         f" {sent['currency']}, {sent['bytes']} bytes"
                         f"{' - ' + sent['error'] if sent['error'] else ''}")
        carts = [[c["cart_id"], "kept", c["total_value"], c["currency"], c["items"],
                  _time(c["abandoned_at"])] for c in entry["kept"]]
        carts += [[c["cart_id"], c["reason"], c["total_value"], c["currency"], c["items"],
                   _time(c["abandoned_at"])] for c in entry["filtered"]]
        if carts:
            text = table(["CART", "VERDICT", "VALUE", "CURRENCY", "ITEMS", "LAST ACTIVITY"], carts)
            lines += ["  " + line for line in text.splitlines()]
    return "\n".join(lines)


def _forget(data: dict[str, int]) -> str:
    return "\n".join([
        f"Forgotten: {data['carts']} carts of this customer.",
        f"  {data['deliveries_rebuilt']} pending deliveries rebuilt without them,"
        f" {data['deliveries_withdrawn']} withdrawn (no cart left),"
        f" {data['deliveries_redacted']} stored payloads redacted",
        f"  {data['deliveries_in_flight']} in flight now: rebuilt as soon as their attempt ends",
    ])


def _replayed(data: dict[str, Any]) -> str:
    if "id" in data:
        return f"queued again: {data['id']} (same webhook-id)"
    return f"queued again: {data['replayed']} dead deliveries (same webhook-ids)"


RENDER: dict[str, Callable[[Any], str]] = {
    "run-once": lambda data: "Cycle " + data["cycle_id"] + ": " + cycle_line(data),
    "deliveries": _deliveries,
    "integrations": _integrations,
    "preview": _preview,
    "forget": _forget,
    "replay": _replayed,
}
