"""The configuration model: loading, defaults, validation and one-line errors."""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

DEFAULT_PATHS = (Path("/etc/cartd/cartd.yaml"), Path("cartd.yaml"))

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
MAX_DURATION_SECONDS = 36500 * 86400.0  # 100 years: dates that far back still exist


class ConfigError(Exception):
    """A configuration problem, phrased as one line that names the key."""


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as `500ms`, `30s`, `5m`, `2h`, `7d`."""
    seconds = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds is None or not math.isfinite(seconds):
        raise ValueError("must be a duration")
    return seconds


def _duration(value: Any) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError("must be a duration such as 30s, 5m, 2h or 7d") from None
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError("must be a duration of at most 36500d")
    return seconds


Duration = Annotated[float, BeforeValidator(_duration)]


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be a duration > 0")
    return value


PositiveDuration = Annotated[float, BeforeValidator(_duration), AfterValidator(_positive)]


def _money(value: Any) -> Any:
    """A number as a Decimal (a float by its shortest repr, so 9.99 is 9.99)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value if isinstance(value, Decimal) else Decimal(repr(value))


Money = Annotated[Decimal, BeforeValidator(_money)]


class Section(BaseModel):
    """Strict: a value of the wrong type (`enabled: "yes"`, `concurrency: "32"`) is an
    error, not converted. Durations take numbers and strings (`30s`), floats take ints, and
    lists are read as the tuples the model holds (`Field(strict=False)`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


_PORT = re.compile(r"[0-9]{1,5}")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _check_port(text: str) -> None:
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")


def _check_dsn_hosts(hostlist: str) -> None:
    """The hosts of a DSN, `host[:port]` or `[v6]:port`, comma-separated, as asyncpg reads
    them: a port it cannot connect to is a config error, not a crash at connect."""
    for spec in hostlist.split(","):
        if not spec:
            raise ValueError("names an empty host")
        if spec.startswith("/"):
            continue
        if spec.startswith("["):
            match = re.fullmatch(r"\[[^\]]+\](?::(.*))?", spec)
            if not match:
                raise ValueError("has an invalid [IPv6] host")
            port = match.group(1) or ""
        else:
            port = spec.partition(":")[2]
        if port:
            _check_port(port)


def _check_dsn(dsn: str) -> str:
    """`database.dsn`: empty, or a `postgresql://` URL whose hosts and ports can be used.
    The reasons never quote the DSN, which holds the password."""
    if not dsn:
        return dsn
    try:
        parsed = urllib.parse.urlparse(dsn)
    except ValueError:  # an unclosed [
        raise ValueError("has an invalid [IPv6] host") from None
    if parsed.scheme not in ("postgresql", "postgres"):
        raise ValueError('must be a postgresql:// URL, or "" for the embedded PostgreSQL')
    hostspec = parsed.netloc.partition("@")[2] if "@" in parsed.netloc else parsed.netloc
    if hostspec:
        _check_dsn_hosts(hostspec)
    if not parsed.query:
        return dsn
    try:
        query = urllib.parse.parse_qs(parsed.query, strict_parsing=True)
    except ValueError:
        raise ValueError("has a malformed query string (?key=value&...)") from None
    for port in query.get("port", [""])[-1].split(","):
        if port:
            _check_port(port)
    if query.get("host", [""])[-1]:
        _check_dsn_hosts(query["host"][-1])
    if query.get("sslmode", ["prefer"])[-1] not in _SSLMODES:
        raise ValueError(f"sslmode must be one of {', '.join(_SSLMODES)}")
    return dsn


class DatabaseConfig(Section):
    dsn: Annotated[str, AfterValidator(_check_dsn)] = Field("", repr=False)
    dsn_file: str = ""
    min_connections: int = Field(1, ge=0, le=1000)
    max_connections: int = Field(10, ge=1, le=1000)
    migrate: bool = True
    pooler: Literal["none", "transaction"] = "none"

    @field_validator("max_connections")
    @classmethod
    def _at_least_min(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_connections")
        if low is not None and value < low:
            raise ValueError(f"must be at least database.min_connections ({low})")
        return value


class PollingConfig(Section):
    enabled: bool = True
    interval: PositiveDuration = 30.0
    template_slug: str = Field("ecommerce-abandoned-cart", min_length=1)
    source_concurrency: int = Field(16, ge=1, le=1024)

    @field_validator("interval")
    @classmethod
    def _interval_range(cls, value: float) -> float:
        if not 1 <= value <= 86400:
            raise ValueError("must be a duration between 1s and 1d")
        return value


class CartsConfig(Section):
    abandoned_after: Duration = 3600.0
    max_age: PositiveDuration = 7 * 86400.0
    min_value: Money = Field(Decimal(0), ge=0)
    require_contact: bool = True
    require_marketing_consent: bool = False
    send_recovered: bool = True

    @field_validator("abandoned_after")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be a duration >= 0")
        return value


class MockConfig(Section):
    carts_per_hour: float = Field(6.0, gt=0, le=3600)
    recovery_rate: float = Field(0.1, ge=0, le=1)


class ShopifyConfig(Section):
    api: Literal["graphql", "rest"] = "graphql"
    api_version: str = "2026-10"


class WooCommerceConfig(Section):
    statuses: tuple[str, ...] = Field(("pending", "failed", "checkout-draft"), strict=False)


class PlatformsConfig(Section):
    default_mode: Literal["mock", "live"] = "mock"
    mock: MockConfig = MockConfig()
    shopify: ShopifyConfig = ShopifyConfig()
    woocommerce: WooCommerceConfig = WooCommerceConfig()


class WebhookConfig(Section):
    url: str = "http://127.0.0.1:8787/webhook"
    secret: str = Field("", repr=False)
    secret_file: str = ""
    extra_secrets: tuple[str, ...] = Field((), repr=False, strict=False)
    timeout: PositiveDuration = 15.0
    concurrency: int = Field(32, ge=1, le=10000)
    max_carts_per_payload: int = Field(100, ge=1, le=10000)
    retry_schedule: tuple[Duration, ...] = Field(
        (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400), strict=False)
    retry_jitter: float = Field(0.2, ge=0, lt=1)
    breaker_failures: int = Field(10, ge=1)
    breaker_probe: PositiveDuration = 30.0
    headers: dict[str, str] = {}
    allowed_override_hosts: tuple[str, ...] = Field((), strict=False)
    max_delivery_age: PositiveDuration = 86400.0

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        return _check_secret(value)

    @field_validator("extra_secrets")
    @classmethod
    def _extra(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_secret(s) for s in value)

    @field_validator("retry_schedule")
    @classmethod
    def _schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(v < 0 for v in value):
            raise ValueError("must be a list of durations >= 0")
        return value

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.secret, *self.extra_secrets) if s)


def _check_secret(value: str) -> str:
    from cartd.signing import decode_secret

    if value:
        try:
            decode_secret(value)
        except ValueError:
            raise ValueError("must be whsec_ followed by base64") from None
    return value


class ControlConfig(Section):
    socket: str = "./var/cartd.sock"
    socket_mode: str = "0660"

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> str:
        text = f"{value:o}" if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not re.fullmatch(r"0?[0-7]{3}", text):
            raise ValueError('must be an octal file mode such as "0660"')
        return text.zfill(4)


class MetricsConfig(Section):
    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if not value:
            return value
        match = re.fullmatch(r"\[?[^\s\]]*\]?:(\d{1,5})", value)
        if not match or int(match.group(1)) > 65535:
            raise ValueError('must be HOST:PORT with a port from 0 to 65535, or ""')
        return value


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console", "auto"] = "auto"


class Config(Section):
    state_dir: str = "./var"
    database: DatabaseConfig = DatabaseConfig()
    polling: PollingConfig = PollingConfig()
    carts: CartsConfig = CartsConfig()
    platforms: PlatformsConfig = PlatformsConfig()
    webhook: WebhookConfig = WebhookConfig()
    retention: PositiveDuration = 7 * 86400.0
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    shutdown_timeout: PositiveDuration = 20.0


# What a reload (SIGHUP, `cartd ctl reload`) cannot change: these keys need a restart, and
# a reload keeps their running value (README "Controlling a running daemon").
RESTART_KEYS = (("control", "socket"), ("control", "socket_mode"), ("metrics", "listen"),
                ("state_dir",), ("database", "dsn"))


def _get(config: Config, key: tuple[str, ...]) -> Any:
    value: Any = config
    for part in key:
        value = getattr(value, part)
    return value


def _keep(new: Config, old: Config, key: tuple[str, ...]) -> Config:
    if len(key) == 1:
        return new.model_copy(update={key[0]: getattr(old, key[0])})
    section = getattr(new, key[0]).model_copy(update={key[1]: _get(old, key)})
    return new.model_copy(update={key[0]: section})


def reloaded(new: Config, running: Config) -> tuple[Config, list[str]]:
    """What a reload applies: `new`, with the running value of every key that needs a
    restart; and the names of those keys that `new` changes (`control.socket`, ...)."""
    kept = []
    for key in RESTART_KEYS:
        if _get(new, key) != _get(running, key):
            kept.append(".".join(key))
            new = _keep(new, running, key)
    return new, kept


def pool_settings(config: Config) -> tuple[int, int, str]:
    """What the database pool is made with; a reload that changes it replaces the pool."""
    database = config.database
    return database.min_connections, database.max_connections, database.pooler


def _format_error(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "config"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    message = first["msg"]
    message = re.sub(r"^Value error, ", "", message)
    message = message[0].lower() + message[1:] if message else "invalid value"
    return f"{key}: {message}"


def _read_secret_file(path: str, key: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{key}: {path} is empty")
    return value


def _dsn(database: DatabaseConfig, env: dict[str, str]) -> str:
    """The DSN: `CARTD_DATABASE_DSN`, else `database.dsn_file`'s, else `database.dsn`;
    checked, and a bad one named as `database.dsn` with where it came from."""
    dsn, source = database.dsn, None
    if database.dsn_file:
        source = "database.dsn_file"
        dsn = _read_secret_file(database.dsn_file, source)
    if "CARTD_DATABASE_DSN" in env:
        dsn, source = env["CARTD_DATABASE_DSN"], "CARTD_DATABASE_DSN"
    if source is None:
        return dsn  # checked with the file
    try:
        return _check_dsn(dsn)
    except ValueError as exc:
        raise ConfigError(f"database.dsn (from {source}): {exc}") from None


def build(raw: Any, env: dict[str, str] | None = None, *, secrets: bool = True) -> Config:
    """Validate a parsed YAML document, apply the environment and secret files.

    `secrets=False` skips the secret files, for `check-config --no-secrets` in places
    that cannot read them (systemd's ExecReload=, which does not see the credentials)."""
    env = os.environ if env is None else env
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config: must be a mapping of keys")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    if not secrets:
        return config
    database, webhook = config.database, config.webhook
    dsn = _dsn(database, env)
    secret, source = webhook.secret, "webhook.secret"
    if webhook.secret_file:
        source = "webhook.secret_file"
        secret = _read_secret_file(webhook.secret_file, source)
    if "CARTD_WEBHOOK_SECRET" in env:
        secret, source = env["CARTD_WEBHOOK_SECRET"], "CARTD_WEBHOOK_SECRET"
    try:
        _check_secret(secret)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return config.model_copy(
            update={
                "database": DatabaseConfig.model_validate({**database.model_dump(), "dsn": dsn}),
                "webhook": WebhookConfig.model_validate({**webhook.model_dump(), "secret": secret}),
            }
        )
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def resolve_path(explicit: str | None, env: dict[str, str] | None = None) -> tuple[Path, bool]:
    """The config file: `--config`, else `$CARTD_CONFIG`, else `/etc/cartd/cartd.yaml` if it
    exists, else `./cartd.yaml`; and whether it may be absent (all defaults), which only
    that last one may: a file named by `--config` or `$CARTD_CONFIG` must exist."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit), False
    if env.get("CARTD_CONFIG"):
        return Path(env["CARTD_CONFIG"]), False
    for candidate in DEFAULT_PATHS:
        if candidate.exists():
            return candidate, False
    return DEFAULT_PATHS[-1], True


# The top-level `control:` block of a YAML file: its line and the indented, blank or
# comment lines after it.
_CONTROL_BLOCK = re.compile(r"^control:.*(?:\n(?:[ \t].*|[ \t]*(?:#.*)?))*", re.MULTILINE)


def control_socket(path: Path, *, missing_ok: bool = True) -> str:
    """`control.socket` from the config file at `path`, reading nothing else: `cartd ctl`
    must reach the daemon when the rest of the file is broken (invalid YAML elsewhere,
    unknown keys, wrong values, unreadable secret files), which is when it is needed most.
    The default when the file or the key is absent."""
    default = ControlConfig.model_fields["socket"].default
    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return default
        raise ConfigError(f"config: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        block = _CONTROL_BLOCK.search(text)
        try:
            raw = yaml.safe_load(block.group(0)) if block else None
        except yaml.YAMLError:
            raise ConfigError(f"control.socket: cannot be read from {path} (invalid YAML);"
                              " pass --socket PATH") from None
    control = raw.get("control") if isinstance(raw, dict) else None
    socket = control.get("socket") if isinstance(control, dict) else None
    if socket is None:
        return default
    if not isinstance(socket, str) or not socket:
        raise ConfigError("control.socket: must be a path")
    return socket


def load(path: Path, env: dict[str, str] | None = None, *, missing_ok: bool = True,
         secrets: bool = True) -> Config:
    """Read and validate a config file; a missing default file means all defaults."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return build({}, env, secrets=secrets)
        raise ConfigError(f"config: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"config: {path}: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config: {path}{where}: {problem}") from None
    return build(raw, env, secrets=secrets)
