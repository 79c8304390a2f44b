"""The non-Python deliverables: the systemd unit, its example config, the Prometheus alert
rules and the Grafana dashboard (README "Running as a systemd service", "Metrics and
alerts").

External tools are used when installed and the tests that need them are skipped otherwise:
`systemd-analyze` and `systemd-sysusers` (Debian package `systemd`), `promtool` (Debian
package `prometheus`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cartd.config import load, parse_duration
from harness import ROOT, SECRET

UNIT = ROOT / "systemd" / "cartd.service"
SYSUSERS = ROOT / "systemd" / "cartd.sysusers"
EXAMPLE_CONFIG = ROOT / "systemd" / "cartd.yaml"
ALERTS = ROOT / "monitoring" / "alerts.yml"
ALERTS_TEST = ROOT / "monitoring" / "alerts_test.yml"
DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
README = ROOT / "README.md"
CONTRACT = ROOT.parent / "shared" / "SPEC.md"  # next to the repository in the development tree only

ALERT_NAMES = {
    "CartdDown",
    "CartdPollingStale",
    "CartdDeadLettersRising",
    "CartdWebhookFailureRatio",
    "CartdBreakerOpen",
    "CartdConfigReloadFailed",
    "CartdIntegrationFailing",
}

MAX_EXPOSURE = 2.5  # `systemd-analyze security` overall exposure, 0 (best) to 10


def _metrics_table(text: str, heading: str) -> dict[str, str]:
    """Metric name -> type from the first table after `heading` in a Markdown text."""
    section = re.search(rf"^{heading}$(.*?)(?=^#+ )", text, re.S | re.M)
    assert section, f"no {heading!r} section"
    rows = re.findall(r"^\|\s*`(cartd_[a-z0-9_]+)`\s*\|\s*([a-z]+)", section.group(1), re.M)
    return dict(rows)


def _documented_metrics() -> dict[str, str]:
    """The metrics of README "Metrics and alerts"."""
    return _metrics_table(README.read_text(), "## Metrics and alerts")


def _metric_names(text: str) -> set[str]:
    """The cartd_ metrics a PromQL text refers to, histogram series mapped to their name."""
    histograms = {n for n, kind in _documented_metrics().items() if kind == "histogram"}
    names = set()
    for name in re.findall(r"\bcartd_[a-z0-9_]+", text):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in histograms else name)
    return names


def _unit(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (repeated keys keep every value, in order)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path}: {raw!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _service() -> dict[str, str]:
    """The [Service] section, the last value of each key."""
    return {key: values[-1] for key, values in _unit()["Service"].items()}


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install -y {package})")
    return path


# -- systemd ---------------------------------------------------------------------------


def test_unit_has_the_settings_spec_7_requires() -> None:
    service = _service()
    expected = {
        "Type": "notify",
        "ExecStart": "/usr/local/bin/cartd --config /etc/cartd/cartd.yaml run",
        "RuntimeDirectory": "cartd",
        "StateDirectory": "cartd",
        "Restart": "on-failure",
        "User": "cartd",
        "Group": "cartd",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures": "native",
        "MemoryDenyWriteExecute": "yes",
        "UMask": "0027",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert _unit()["Service"]["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert "@system-service" in _unit()["Service"]["SystemCallFilter"]
    assert parse_duration(service["WatchdogSec"]) > 0
    assert sorted(_unit()["Service"]["LoadCredential"]) == [
        "database-dsn:/etc/cartd/database-dsn",
        "webhook-secret:/etc/cartd/webhook-secret",
    ]
    # cartd must reach PostgreSQL and webhook receivers anywhere.
    assert "IPAddressDeny" not in service
    assert "PrivateNetwork" not in service


def test_example_config_matches_the_unit(tmp_path: Path) -> None:
    """The paths in systemd/cartd.yaml are the ones the unit provides."""
    service = _service()
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert raw["state_dir"] == f"/var/lib/{service['StateDirectory']}"
    assert Path(raw["control"]["socket"]).parent == Path("/run") / service["RuntimeDirectory"]
    # cartd does not expand ${CREDENTIALS_DIRECTORY}: the paths are literal.
    credentials = Path("/run/credentials") / UNIT.name
    ids = {entry.split(":", 1)[0] for entry in _unit()["Service"]["LoadCredential"]}
    assert raw["database"]["dsn_file"] == str(credentials / "database-dsn")
    assert raw["webhook"]["secret_file"] == str(credentials / "webhook-secret")
    assert {"database-dsn", "webhook-secret"} <= ids
    # systemd must not SIGKILL cartd before its own shutdown_timeout is over.
    config = load(_example_with_credentials(tmp_path), env={})
    assert parse_duration(service["TimeoutStopSec"]) > config.shutdown_timeout


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze", "systemd")
    unit = UNIT
    binary = Path(_service()["ExecStart"].split()[0])
    if not binary.is_file():
        # verify rejects a unit whose Exec binaries are missing. Where cartd is not
        # installed system-wide, check the same unit with the path of this venv's script.
        script = Path(sys.executable).parent / "cartd"
        if not script.is_file():
            pytest.skip(f"{binary} does not exist and neither does {script}")
        unit = tmp_path / UNIT.name
        text = re.sub(rf"^(Exec\w+=){re.escape(str(binary))} ", rf"\g<1>{script} ",
                      UNIT.read_text(), flags=re.M)
        assert text != UNIT.read_text()
        unit.write_text(text)
    result = _run(analyze, "verify", unit)
    # verify exits 0 even for unknown keys and bad values: it must also say nothing.
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output


def test_unit_security_exposure_is_low() -> None:
    analyze = _tool("systemd-analyze", "systemd")
    result = _run(analyze, "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}",
                  UNIT)
    if "--offline" in result.stderr or "--threshold" in result.stderr:
        pytest.skip(f"systemd-analyze is too old for security --offline: {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_sysusers_creates_the_cartd_user(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers", "systemd")
    lines = [ln for ln in SYSUSERS.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == ['u cartd - "cartd daemon" /var/lib/cartd']
    result = _run(sysusers, "--dry-run", f"--root={tmp_path}", SYSUSERS)
    assert result.returncode == 0, result.stderr
    assert "Creating user 'cartd'" in result.stdout + result.stderr


def _example_with_credentials(tmp_path: Path) -> Path:
    """systemd/cartd.yaml with its credential paths pointed at files in tmp_path."""
    dsn = tmp_path / "database-dsn"
    dsn.write_text("postgresql://cartd:s3cret@db.example.com:5432/shop\n")
    secret = tmp_path / "webhook-secret"
    secret.write_text(SECRET + "\n")
    text = EXAMPLE_CONFIG.read_text()
    for name, path in (("database-dsn", dsn), ("webhook-secret", secret)):
        literal = f"/run/credentials/cartd.service/{name}"
        assert literal in text
        text = text.replace(literal, str(path))
    config = tmp_path / "cartd.yaml"
    config.write_text(text)
    return config


def test_example_config_loads_with_its_credentials(tmp_path: Path) -> None:
    config = load(_example_with_credentials(tmp_path), env={}, missing_ok=False)
    assert config.state_dir == "/var/lib/cartd"
    assert config.control.socket == "/run/cartd/control.sock"
    assert config.control.socket_mode == "0660"
    assert config.database.dsn == "postgresql://cartd:s3cret@db.example.com:5432/shop"
    assert config.webhook.secret == SECRET
    assert config.webhook.url.startswith("https://")
    assert config.logging.format == "json"
    assert config.metrics.listen


# -- Prometheus ------------------------------------------------------------------------


def test_the_readme_lists_the_contracts_metrics() -> None:
    if not CONTRACT.is_file():
        pytest.skip("the contract is not next to the repository (a clean clone)")
    assert _documented_metrics() == _metrics_table(CONTRACT.read_text(), r"## 8\..*?")
    assert len(_documented_metrics()) == 20


def test_alert_rules_cover_the_alerts_and_use_documented_metrics() -> None:
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
             for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} == ALERT_NAMES
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        unknown = _metric_names(rule["expr"]) - set(_documented_metrics())
        assert not unknown, f"{rule['alert']}: not in the README: {sorted(unknown)}"


def test_promtool_check_rules() -> None:
    promtool = _tool("promtool", "prometheus")
    result = _run(promtool, "check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    promtool = _tool("promtool", "prometheus")
    result = _run(promtool, "test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERTS_TEST.read_text()))
    assert tested == ALERT_NAMES


# -- Grafana ---------------------------------------------------------------------------


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return panels


def test_dashboard_is_valid_and_uses_documented_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    exprs = []
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            exprs.append(target["expr"])
    used = _metric_names("\n".join(exprs))
    unknown = used - set(_documented_metrics())
    assert not unknown, f"not in the README: {sorted(unknown)}"
    # Everything but the build info is graphed.
    assert set(_documented_metrics()) - used <= {"cartd_build_info"}
