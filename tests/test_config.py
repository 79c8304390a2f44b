from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from cartd.config import (Config, ConfigError, build, control_socket, load, parse_duration,
                          resolve_path)
from harness import ROOT, new_secret

SHIPPED = ROOT / "cartd.yaml"
SECRET = new_secret()

# The documented defaults (README "Configuration", cartd.yaml), durations in seconds.
SPEC_DEFAULTS: dict[str, Any] = {
    "state_dir": "./var",
    "database": {
        "dsn": "",
        "dsn_file": "",
        "min_connections": 1,
        "max_connections": 10,
        "migrate": True,
        "pooler": "none",
    },
    "polling": {
        "enabled": True,
        "interval": 30.0,
        "template_slug": "ecommerce-abandoned-cart",
        "source_concurrency": 16,
    },
    "carts": {
        "abandoned_after": 3600.0,
        "max_age": 7 * 86400.0,
        "min_value": Decimal(0),
        "require_contact": True,
        "require_marketing_consent": False,
        "send_recovered": True,
    },
    "platforms": {
        "default_mode": "mock",
        "mock": {"carts_per_hour": 6.0, "recovery_rate": 0.1},
        "shopify": {"api": "graphql", "api_version": "2026-10"},
        "woocommerce": {"statuses": ("pending", "failed", "checkout-draft")},
    },
    "webhook": {
        "url": "http://127.0.0.1:8787/webhook",
        "secret": "",
        "secret_file": "",
        "extra_secrets": (),
        "timeout": 15.0,
        "concurrency": 32,
        "max_carts_per_payload": 100,
        "retry_schedule": (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0),
        "retry_jitter": 0.2,
        "breaker_failures": 10,
        "breaker_probe": 30.0,
        "headers": {},
        "allowed_override_hosts": (),
        "max_delivery_age": 86400.0,
    },
    "retention": 7 * 86400.0,
    "control": {"socket": "./var/cartd.sock", "socket_mode": "0660"},
    "metrics": {"listen": "127.0.0.1:9464"},
    "logging": {"level": "info", "format": "auto"},
    "shutdown_timeout": 20.0,
}


def error_of(raw: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        build(raw, {} if env is None else env)
    message = str(caught.value)
    assert "\n" not in message
    return message


def write(tmp_path: Path, text: str, name: str = "cartd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_spec() -> None:
    assert build({}, {}).model_dump() == SPEC_DEFAULTS
    assert build(None, {}) == build({}, {})


def test_shipped_file_loads_to_exactly_the_defaults() -> None:
    assert load(SHIPPED, {}, missing_ok=False) == build({}, {})


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys |= _keys(field.annotation, f"{prefix}{name}.")
    return keys


def _raw_keys(raw: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for name, value in raw.items():
        keys.add(prefix + name)
        if isinstance(value, dict) and value:
            keys |= _raw_keys(value, f"{prefix}{name}.")
    return keys


def test_shipped_file_documents_every_key() -> None:
    assert _raw_keys(yaml.safe_load(SHIPPED.read_text())) == _keys(Config)


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1.5h", 5400.0),
        (" 45 ", 45.0),
        (30, 30.0),
        (0.25, 0.25),
        ("0", 0.0),
    ],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["abc", "5 minutes", "-5s", "5w", "", True, None, [5],
                                   float("nan"), float("inf")])
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_durations_in_the_file() -> None:
    config = build(
        {
            "polling": {"interval": "5m"},
            "webhook": {"timeout": "500ms", "retry_schedule": ["1s", 2, "3m"], "breaker_probe": 10},
            "carts": {"abandoned_after": "0s", "max_age": "2d"},
            "retention": "2h",
        },
        {},
    )
    assert config.polling.interval == 300.0
    assert config.webhook.timeout == 0.5
    assert config.webhook.retry_schedule == (1.0, 2.0, 180.0)
    assert config.webhook.breaker_probe == 10.0
    assert (config.carts.abandoned_after, config.carts.max_age) == (0.0, 172800.0)
    assert config.retention == 7200.0


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"webhok": {}}, "webhok: unknown key"),
        ({"webhook": {"timout": "5s"}}, "webhook.timout: unknown key"),
        ({"platforms": {"mock": {"carts_per_hr": 1}}}, "platforms.mock.carts_per_hr: unknown key"),
    ],
)
def test_unknown_key(raw: dict[str, Any], expected: str) -> None:
    assert error_of(raw) == expected


@pytest.mark.parametrize(
    "raw, key, words",
    [
        ({"polling": {"interval": "abc"}}, "polling.interval", "must be a duration"),
        ({"polling": {"interval": True}}, "polling.interval", "must be a duration"),
        ({"polling": {"enabled": "perhaps"}}, "polling.enabled", "bool"),
        ({"webhook": {"concurrency": "many"}}, "webhook.concurrency", "integer"),
        ({"webhook": {"headers": {"x-a": 1}}}, "webhook.headers.x-a", "string"),
        ({"webhook": {"retry_schedule": ["5s", "x"]}}, "webhook.retry_schedule.1", "must be a duration"),
        ({"webhook": {"url": "ftp://example.com"}}, "webhook.url", "http"),
        ({"database": []}, "database", "valid dictionary"),
        ({"logging": {"level": "loud"}}, "logging.level", "'info'"),
        ({"control": {"socket_mode": "999"}}, "control.socket_mode", "octal"),
        ({"metrics": {"listen": "9464"}}, "metrics.listen", "HOST:PORT"),
        # quoted in YAML: a string, not what the key takes
        ({"polling": {"enabled": "yes"}}, "polling.enabled", "bool"),
        ({"webhook": {"concurrency": "32"}}, "webhook.concurrency", "integer"),
        ({"webhook": {"concurrency": 32.5}}, "webhook.concurrency", "integer"),
        ({"database": {"max_connections": True}}, "database.max_connections", "integer"),
        ({"platforms": {"mock": {"recovery_rate": "0.5"}}}, "platforms.mock.recovery_rate",
         "number"),
        ({"carts": {"min_value": "5"}}, "carts.min_value", "must be a number"),
        ({"carts": {"min_value": True}}, "carts.min_value", "must be a number"),
        ({"state_dir": 5}, "state_dir", "string"),
        ({"platforms": {"woocommerce": {"statuses": ["pending", 3]}}},
         "platforms.woocommerce.statuses.1", "string"),
    ],
)
def test_wrong_type(raw: dict[str, Any], key: str, words: str) -> None:
    message = error_of(raw)
    assert message.startswith(f"{key}: ")
    assert words in message


@pytest.mark.parametrize(
    "raw, key, words",
    [
        ({"webhook": {"timeout": 0}}, "webhook.timeout", "must be a duration > 0"),
        ({"webhook": {"timeout": "0s"}}, "webhook.timeout", "must be a duration > 0"),
        ({"webhook": {"timeout": -1}}, "webhook.timeout", "must be a duration > 0"),
        ({"retention": "0ms"}, "retention", "must be a duration > 0"),
        ({"polling": {"interval": "500ms"}}, "polling.interval", "between 1s and 1d"),
        ({"polling": {"interval": "2d"}}, "polling.interval", "between 1s and 1d"),
        ({"webhook": {"concurrency": 0}}, "webhook.concurrency", "greater than or equal to 1"),
        ({"webhook": {"retry_jitter": 1}}, "webhook.retry_jitter", "less than 1"),
        ({"webhook": {"retry_schedule": [-1]}}, "webhook.retry_schedule", ">= 0"),
        ({"carts": {"min_value": -1}}, "carts.min_value", "greater than or equal to 0"),
        ({"platforms": {"mock": {"recovery_rate": 2}}}, "platforms.mock.recovery_rate", "or equal to 1"),
        ({"metrics": {"listen": "127.0.0.1:99999"}}, "metrics.listen", "port from 0 to 65535"),
        ({"metrics": {"listen": "[::1]:65536"}}, "metrics.listen", "port from 0 to 65535"),
        ({"database": {"min_connections": 20, "max_connections": 5}},
         "database.max_connections", "at least database.min_connections (20)"),
        ({"retention": "1000000d"}, "retention", "at most 36500d"),
        ({"carts": {"min_value": float("inf")}}, "carts.min_value", "finite"),
    ],
)
def test_out_of_range(raw: dict[str, Any], key: str, words: str) -> None:
    message = error_of(raw)
    assert message.startswith(f"{key}: ")
    assert words in message


def test_strict_types_keep_what_users_write() -> None:
    """Durations as numbers or strings, ints where floats go, YAML lists, an unquoted
    octal mode, the pool sizes equal: all still read as before."""
    config = build({
        "polling": {"interval": 30, "enabled": False},
        "webhook": {"timeout": "15s", "retry_jitter": 0, "retry_schedule": ["1s", 2],
                    "allowed_override_hosts": ["hooks.example.com"]},
        "platforms": {"mock": {"carts_per_hour": 6, "recovery_rate": 0},
                      "woocommerce": {"statuses": ["pending"]}},
        "carts": {"min_value": 9.99},
        "database": {"min_connections": 5, "max_connections": 5},
        "control": {"socket_mode": 0o600},
        "metrics": {"listen": "[::1]:0"},
    }, {})
    assert (config.polling.interval, config.webhook.timeout) == (30.0, 15.0)
    assert config.webhook.retry_jitter == 0.0 and config.webhook.retry_schedule == (1.0, 2.0)
    assert config.webhook.allowed_override_hosts == ("hooks.example.com",)
    assert config.platforms.woocommerce.statuses == ("pending",)
    assert config.carts.min_value == Decimal("9.99")
    assert config.control.socket_mode == "0600"


@pytest.mark.parametrize("dsn, words", [
    ("postgresql://cartd:hunter2@db:notaport/cartd", "port must be a number from 1 to 65535"),
    ("postgresql://cartd:hunter2@db:99999/cartd", "port must be a number from 1 to 65535"),
    ("postgresql://cartd:hunter2@db:0/cartd", "port must be a number from 1 to 65535"),
    ("postgresql://cartd:hunter2@a:5432,b:x/cartd", "port must be a number from 1 to 65535"),
    ("postgresql://cartd:hunter2@a,,b/cartd", "empty host"),
    ("postgresql://cartd:hunter2@[::1:5432/cartd", "IPv6"),
    ("postgresql://cartd:hunter2@/cartd?host=/run/pg&port=70000", "port must be a number"),
    ("postgresql://cartd:hunter2@db/cartd?hunter2", "malformed query"),
    ("postgresql://cartd:hunter2@db/cartd?sslmode=always", "sslmode must be one of"),
    ("mysql://cartd:hunter2@db/cartd", "must be a postgresql:// URL"),
])
def test_bad_dsn_names_the_key_and_hides_the_password(dsn: str, words: str) -> None:
    for raw, env, key in (({"database": {"dsn": dsn}}, {}, "database.dsn: "),
                          ({}, {"CARTD_DATABASE_DSN": dsn},
                           "database.dsn (from CARTD_DATABASE_DSN): ")):
        message = error_of(raw, env)
        assert message.startswith(key) and words in message, message
        assert "hunter2" not in message


def test_bad_dsn_from_a_file_names_the_file_key(tmp_path: Path) -> None:
    path = write(tmp_path, "postgresql://cartd:hunter2@db:5432x/cartd\n", "dsn")
    message = error_of({"database": {"dsn_file": str(path)}})
    assert message.startswith("database.dsn (from database.dsn_file): the port")
    assert "hunter2" not in message


@pytest.mark.parametrize("dsn", [
    "postgresql://cartd:p%40ss@db.example.com:6432/cartd?sslmode=verify-full",
    "postgres://cartd@[2001:db8::1]:5432,db2:5433/cartd",
    "postgresql:///cartd?host=/run/postgresql&port=5432",
    "postgresql://cartd:@/cartd?host=/tmp",
])
def test_good_dsns_pass(dsn: str) -> None:
    assert build({}, {"CARTD_DATABASE_DSN": dsn}).database.dsn == dsn
    assert dsn not in repr(build({"database": {"dsn": dsn}}, {}))  # it holds the password


def test_top_level_must_be_a_mapping() -> None:
    assert error_of(["a", "b"]) == "config: must be a mapping of keys"


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"webhook": {"secret": "not-a-secret"}}, "webhook.secret"),
        ({"webhook": {"secret": "whsec_not!base64"}}, "webhook.secret"),
        ({"webhook": {"extra_secrets": [SECRET, "not-a-secret"]}}, "webhook.extra_secrets"),
    ],
)
def test_bad_secret_names_the_key_and_hides_the_value(raw: dict[str, Any], key: str) -> None:
    message = error_of(raw)
    assert message == f"{key}: must be whsec_ followed by base64"
    assert "not-a-secret" not in message and "not!base64" not in message


def test_bad_secret_from_the_environment_names_the_variable() -> None:
    message = error_of({}, {"CARTD_WEBHOOK_SECRET": "not-a-secret"})
    assert message == "CARTD_WEBHOOK_SECRET: must be whsec_ followed by base64"


def test_bad_secret_from_a_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "not-a-secret\n", "secret")
    message = error_of({"webhook": {"secret_file": str(path)}})
    assert message == "webhook.secret_file: must be whsec_ followed by base64"


def test_environment_overrides_the_file() -> None:
    other = new_secret()
    config = build(
        {"database": {"dsn": "postgresql://file/db"}, "webhook": {"secret": SECRET}},
        {"CARTD_DATABASE_DSN": "postgresql://env/db", "CARTD_WEBHOOK_SECRET": other},
    )
    assert config.database.dsn == "postgresql://env/db"
    assert config.webhook.secret == other


def test_environment_can_clear_a_secret() -> None:
    assert build({"webhook": {"secret": SECRET}}, {"CARTD_WEBHOOK_SECRET": ""}).webhook.secret == ""


def test_secret_files_are_read(tmp_path: Path) -> None:
    secret = write(tmp_path, SECRET + "\n", "secret")
    dsn = write(tmp_path, "postgresql://cartd:pw@db/cartd\n", "dsn")
    raw = {"webhook": {"secret_file": str(secret)}, "database": {"dsn_file": str(dsn)}}
    config = build(raw, {})
    assert config.webhook.secret == SECRET
    assert config.webhook.secrets == (SECRET,)
    assert config.database.dsn == "postgresql://cartd:pw@db/cartd"


def test_environment_beats_secret_files(tmp_path: Path) -> None:
    secret = write(tmp_path, new_secret(), "secret")
    dsn = write(tmp_path, "postgresql://file/db", "dsn")
    config = build(
        {"webhook": {"secret_file": str(secret)}, "database": {"dsn_file": str(dsn)}},
        {"CARTD_DATABASE_DSN": "postgresql://env/db", "CARTD_WEBHOOK_SECRET": SECRET},
    )
    assert (config.database.dsn, config.webhook.secret) == ("postgresql://env/db", SECRET)


@pytest.mark.parametrize("key", ["webhook.secret_file", "database.dsn_file"])
def test_missing_secret_file(tmp_path: Path, key: str) -> None:
    section, name = key.split(".")
    missing = tmp_path / "nope"
    message = error_of({section: {name: str(missing)}})
    assert message.startswith(f"{key}: ")
    assert str(missing) in message


@pytest.mark.parametrize("key", ["webhook.secret_file", "database.dsn_file"])
def test_empty_secret_file(tmp_path: Path, key: str) -> None:
    section, name = key.split(".")
    empty = write(tmp_path, "\n", "empty")
    assert error_of({section: {name: str(empty)}}) == f"{key}: {empty} is empty"


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "polling:\n  interval: 2m\nwebhook:\n  secret: " + SECRET + "\n")
    config = load(path, {})
    assert config.polling.interval == 120.0
    assert config.webhook.secret == SECRET


def test_load_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load(write(tmp_path, "# nothing\n"), {}) == build({}, {})


@pytest.mark.parametrize(
    "text", ["webhook: [unclosed\n", "a: b: c\n", "webhook:\n\t- x\n", "key: 'open\n"]
)
def test_invalid_yaml_is_one_line(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"config: {path}")


@pytest.mark.parametrize("content, error", [
    (b"polling:\n  interval: \xff\xfe30s\n", "config: {path} is not UTF-8 text"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "config: {path}: nested too deeply"),
])
def test_a_file_yaml_cannot_read_is_one_line(tmp_path: Path, content: bytes, error: str) -> None:
    path = tmp_path / "cartd.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    assert str(caught.value) == error.format(path=path)


def test_load_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^webhook\.timeout: must be a duration > 0$"):
        load(write(tmp_path, "webhook:\n  timeout: 0\n"), {})


def test_missing_default_file_gives_defaults(tmp_path: Path) -> None:
    assert load(tmp_path / "cartd.yaml", {}) == build({}, {})


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load(path, {}, missing_ok=False)
    assert str(caught.value) == f"config: {path} does not exist"


def test_only_the_implicit_file_may_be_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    named = str(tmp_path / "named.yaml")
    assert resolve_path(named, {}) == (Path(named), False)
    assert resolve_path(None, {"CARTD_CONFIG": named}) == (Path(named), False)
    if not Path("/etc/cartd/cartd.yaml").exists():
        assert resolve_path(None, {}) == (Path("cartd.yaml"), True)


def test_unreadable_path_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {})
    assert str(caught.value).startswith(f"config: cannot read {tmp_path}")
    assert "\n" not in str(caught.value)


def test_secret_is_not_in_repr() -> None:
    config = build({"webhook": {"secret": SECRET, "extra_secrets": [SECRET]}}, {})
    assert SECRET not in repr(config)
    assert SECRET not in str(config)


@pytest.mark.parametrize("rest", [
    "polling:\n  interval: banana\n",  # a wrong value
    "webhook: {url: [\n",  # YAML that does not parse
    "polling:\n  intervall: 5s\n",  # an unknown key
    "webhook:\n  secret_file: /run/credentials/cartd.service/absent\n",  # an unreadable secret
])
def test_ctl_finds_its_socket_in_an_otherwise_broken_file(tmp_path: Path, rest: str) -> None:
    path = write(tmp_path, "# cartd\ncontrol:\n  # the socket\n  socket: /run/x/control.sock\n"
                           "  socket_mode: \"0660\"\n" + rest)
    with pytest.raises(ConfigError):
        load(path, {})
    assert control_socket(path) == "/run/x/control.sock"


def test_ctl_socket_defaults_and_errors(tmp_path: Path) -> None:
    default = Config().control.socket
    assert control_socket(tmp_path / "absent.yaml") == default
    assert control_socket(write(tmp_path, "polling: {interval: 5s}\n")) == default
    with pytest.raises(ConfigError, match="does not exist"):
        control_socket(tmp_path / "absent.yaml", missing_ok=False)
    with pytest.raises(ConfigError, match=r"control.socket: cannot be read from .* \(invalid YAML\)"):
        control_socket(write(tmp_path, "control:\n  socket: [\n"))
    with pytest.raises(ConfigError, match="control.socket: must be a path"):
        control_socket(write(tmp_path, "control:\n  socket: 5\n"))
