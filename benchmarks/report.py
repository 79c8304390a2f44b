"""The table `run.py` prints from its results: a few lines per part."""

from __future__ import annotations

from typing import Any

from common import CYCLE_CARTS_PER_HOUR


class Lines(list):
    """The table's lines: titles as they are, rows as name, value and a note in columns."""

    def row(self, name: str, value: str, note: str = "") -> None:
        self.append(f"  {name:<46} {value:>14}  {note}")


def delivery_lines(a: dict[str, Any], lines: Lines) -> None:
    lines.append(f"(a) durable delivery: {a['deliveries']:,} deliveries, concurrency "
                 f"{a['concurrency']}, ~{a['mean_body_bytes']} B bodies, signed")
    lines.row("cartd Deliverer (PostgreSQL outbox)", f"{a['durable']['per_second']:,.0f} /s",
              f"{a['durable']['seconds']:.2f} s")
    lines.row("bare aiohttp loop (same bodies, signed)", f"{a['bare']['per_second']:,.0f} /s",
              f"{a['bare']['seconds']:.2f} s")
    lines.row("ratio durable / bare", f"{a['ratio']:.2f}",
              "target >= 0.5: " + ("met" if a["ratio"] >= 0.5 else "NOT met"))
    for name, part in (("durable", a["durable"]), ("bare", a["bare"])):
        used = part["cpu_seconds"]
        lines.row(f"CPU per request, {name} (us)",
                  f"{sum(used.values()) / a['deliveries'] * 1e6:,.0f}",
                  ", ".join(f"{k} {v / a['deliveries'] * 1e6:,.0f}" for k, v in used.items()))


def cycle_lines(b: dict[str, Any], lines: Lines) -> None:
    lines.append(f"(b) mock-mode cycle, 3 integrations per agent, carts_per_hour "
                 f"{CYCLE_CARTS_PER_HOUR} (first poll: 24 h of history), no delivery")
    for run in b["runs"]:
        for label, name in (("first", "first cycle"), ("second", "next cycle (median of 3)")):
            c = run[label]
            lines.row(f"{run['agents']:,} agents, {name}",
                      f"{c['seconds']:.2f} s",
                      f"{c['carts_found']:,} carts, {c['carts_per_second']:,.0f} carts/s, "
                      f"{c['deliveries_enqueued']:,} webhooks queued")
    k = f"x{b['agents_ratio']:g}"
    lines.row(f"growth, {k} agents: first cycle time", f"x{b['growth_first']:.2f}",
              f"linear = {k}")
    lines.row(f"growth, {k} agents: next cycle time", f"x{b['growth_second']:.2f}",
              f"linear = {k}")
    big = b["runs"][-1]["first"]["seconds"]
    if b["runs"][-1]["agents"] >= 10_000:
        lines.row("target: 10,000-agent cycle < 10 s", f"{big:.2f} s",
                  "met" if big < 10 else "NOT met")


def memory_lines(c: dict[str, Any], lines: Lines) -> None:
    d = c.get("daemon")
    if d:
        lines.append(f"(c) memory: `cartd run`, {d['agents']:,} agents x 3, one cycle + "
                     "delivery of its webhooks")
        lines.row("cartd run peak RSS", f"{d['peak_rss_mb']:.1f} MB",
                  f"idle {d['rss_idle_mb']:.1f} MB, target < 150 MB: "
                  + ("met" if d["peak_rss_mb"] < 150 else "NOT met"))
        lines.row("cartd run cycle / all delivered", f"{d['cycle_seconds']:.1f} s",
                  f"{d['all_delivered_seconds']:.1f} s for {d['webhooks_received']:,} webhooks")
    s = c.get("short")
    if s:
        lines.append(f"    {s['cycles']:,} short cycles, {s['agents']} agents x 3, "
                     f"RSS of a Poller+Deliverer process every {max(1, s['cycles'] // 10)} cycles")
        lines.row("RSS first / last sample",
                  f"{s['rss_first_mb']:.1f} / {s['rss_last_mb']:.1f} MB",
                  f"growth after warm-up {s['growth_after_warmup_mb']:+.1f} MB")
        lines.row("samples (MB)", "", " ".join(f"{x['rss_mb']:.0f}" for x in s["samples"]))


def pooler_lines(d: dict[str, Any], lines: Lines) -> None:
    if "runs" not in d:
        lines.append(f"(d) skipped: {d['skipped']}")
        return
    lines.append(f"(d) database.pooler: {d['deliveries']:,} durable deliveries, then (b) "
                 f"with {d['agents']:,} agents, per setup; x = ratio to the first row")
    for run in d["runs"]:
        x = run["ratios"]
        lines.row(f"{run['setup']}: deliveries",
                  f"{run['deliveries_per_second']:,.0f} /s",
                  f"x{x['deliveries_per_second']:.2f}; CPU {run['cpu_us_per_delivery']:,.0f} us"
                  f" per delivery, x{x['cpu_us_per_delivery']:.2f} (cartd + database side)")
        lines.row(f"{run['setup']}: first cycle", f"{run['first_cycle_seconds']:.2f} s",
                  f"x{x['first_cycle_seconds']:.2f}; cartd CPU"
                  f" x{x['first_cycle_cartd_cpu_seconds']:.2f},"
                  f" database CPU x{x['cycles_database_cpu_seconds']:.2f}; next cycle"
                  f" {run['next_cycle_seconds']:.2f} s x{x['next_cycle_seconds']:.2f}")


PARTS = (("a", delivery_lines), ("b", cycle_lines), ("c", memory_lines), ("d", pooler_lines))


def table(results: dict[str, Any]) -> str:
    """The table of the parts in `results`, (a) to (d)."""
    lines = Lines()
    for part, write in PARTS:
        if results.get(part):
            write(results[part], lines)
    return "\n".join(lines)
