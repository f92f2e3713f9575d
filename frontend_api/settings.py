"""The front-end's settings. The launcher (`llmserve`) extends them with its own (llmserve/settings.py); both
are read from the same sources, so one TOML file or one set of variables configures the whole stack.

Precedence, highest first: CLI flags (init arguments), environment (`LLMSERVE_<FIELD>`, plus the conventional
`DATABASE_URL` and `REDIS_URL`), the TOML file given by `--config` or `LLMSERVE_CONFIG`, then the defaults here.
An unknown key or an invalid value stops start-up with a message naming the key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

CONFIG_ENV = "LLMSERVE_CONFIG"
SETTINGS_JSON_ENV = "LLMSERVE_SETTINGS_JSON"  # the launcher's effective settings, handed to its worker processes
SECRET_FIELDS = ("database_url", "redis_url")  # masked by `llmserve config show`
DEFAULT_TRITON_GRPC_PORT = 8101
WEB_DIST = Path(__file__).resolve().parent / "web" / "dist"  # `make web` builds the UI here


def default_home() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "llmserve"


def _env_alias(field: str, conventional: str) -> AliasChoices:
    """A field also read from a conventional, unprefixed variable (DATABASE_URL, REDIS_URL)."""
    return AliasChoices(field, f"LLMSERVE_{field.upper()}", conventional)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLMSERVE_", extra="forbid", validate_default=True, env_ignore_empty=True, populate_by_name=True
    )

    # Front-end (the public API)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    auth: bool = Field(False, description="Require an API key (`llmserve keys create`) on every /v1 route.")
    allow_unauthenticated_public_bind: bool = Field(
        False, description="Serve on a non-loopback address although authentication is off."
    )
    cors_origins: list[str] = Field([], description="Origins allowed by CORS; empty (the default) allows none.")
    api_docs: bool = Field(
        True,
        description="Serve /openapi.json, /docs and /redoc without a key (they describe the "
        "API, no data); false hides them.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    drain_timeout_s: float = Field(
        30,
        ge=0,
        description="On SIGTERM: time in-flight generations get to finish "
        "(new requests get 503) before they are ended with an error and the process exits.",
    )

    # Connections (frontend_api/server/protocol.py; docs/RELIABILITY.md "Slow and idle clients")
    http_header_timeout_s: float = Field(
        10,
        gt=0,
        description="Time a request gets to send its complete headers (from the connection's opening, or "
        "the first byte of a later request); then 408, or a silent close if nothing came.",
    )
    http_body_timeout_s: float = Field(
        60, gt=0, description="Time a request gets, after its headers, to send its whole body; then 408 and close."
    )
    http_keepalive_timeout_s: float = Field(
        5, gt=0, description="An idle keep-alive connection is closed after this long without a new request."
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="Open connections (HTTP and WebSocket) per front-end process; more get 503 "
        "too_many_connections and are closed.",
    )

    # Triton (internal). The front-end reaches it over gRPC only; by default the Triton that `serve` starts.
    triton_grpc_url: str = Field("", description="host:port of Triton's gRPC; default 127.0.0.1:<grpc port>")

    # Where llmserve keeps its files (the default SQLite database; the launcher's converted models too).
    home: Path = Field(default_factory=default_home, description="Cache for converted checkpoints and repositories.")

    # Storage: sessions, messages and API keys. SQLite file under `home` unless DATABASE_URL says otherwise.
    database_url: str = Field("", validation_alias=_env_alias("database_url", "DATABASE_URL"))
    session_history_messages: int = Field(20, ge=1, le=1000, description="Stored messages prepended at most.")

    # Limits. rpm/tpm/streams are per API key (keys may carry their own), per client address when auth is off.
    redis_url: str | None = Field(
        None,
        validation_alias=_env_alias("redis_url", "REDIS_URL"),
        description="Share rate-limit counters between front-end processes.",
    )
    redis_key_prefix: str = Field("llmserve", min_length=1, description="Prefix of the rate-limit keys in Redis.")
    rate_limit_fail_open: bool = Field(
        False,
        description="Redis unreachable: serve rate-limited requests unlimited "
        "(logged and counted) instead of refusing them with 503.",
    )
    rate_limit_rpm: int | None = Field(None, ge=1, description="Requests per minute; unset is unlimited.")
    rate_limit_tpm: int | None = Field(None, ge=1, description="Prompt + completion tokens per minute.")
    max_streams_per_key: int | None = Field(None, ge=1, description="Concurrent generations per key in this process.")
    max_in_flight: int = Field(512, ge=1, description="Concurrent generations in this process; more get 503.")
    max_request_bytes: int = Field(1_000_000, ge=1024)
    max_prompt_tokens: int | None = Field(None, ge=1, description="Longest prompt accepted; unset is the context.")
    max_tokens_limit: int | None = Field(None, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int | None = Field(
        None, ge=1, description="max_tokens when a request sets none; unset means the rest of the context."
    )

    # Web chat UI, served at / (built by `make web` from frontend_api/web)
    web_dir: Path = Field(WEB_DIST, description="The built web UI (index.html and assets/).")

    # WebSocket chat
    ws_keepalive_s: float = Field(20, gt=0, description="Server ping interval on /v1/chat/ws.")
    ws_auth_timeout_s: float = Field(10, gt=0, description="Time a WebSocket client has to authenticate.")
    ws_ping_timeout_s: float = Field(
        20, gt=0, description="A WebSocket whose peer does not answer a protocol ping within this long is closed."
    )
    ws_idle_timeout_s: float = Field(
        600,
        gt=0,
        description="A WebSocket on which the client sends no frame for this long, with no reply being "
        "generated, gets an idle_timeout error frame and is closed with code 4408.",
    )
    key_cache_ttl_s: float = Field(
        1.0,
        ge=0,
        le=1.0,
        description="How long an open WebSocket may trust an API-key check before checking the database again "
        "(every chat frame is checked; 0: no cache).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    @field_validator("host")
    @classmethod
    def _host_is_an_address(cls, value: str) -> str:
        return check_address(value)

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str:
        """Accept the usual spellings and pick the async drivers we ship (aiosqlite, psycopg 3)."""
        if not value:  # an empty DATABASE_URL means the default
            return ""
        scheme = value.split("://", 1)[0] if "://" in value else ""
        drivers = {
            "sqlite": "sqlite+aiosqlite",
            "sqlite+aiosqlite": "sqlite+aiosqlite",
            "postgresql": "postgresql+psycopg",
            "postgres": "postgresql+psycopg",
            "postgresql+psycopg": "postgresql+psycopg",
        }
        if scheme not in drivers:
            raise ValueError(f"must be a sqlite:/// or postgresql:// URL, got scheme {scheme!r}")
        return drivers[scheme] + value[len(scheme) :]

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/")):
                raise ValueError(f"each origin must be '*' or scheme://host[:port] (no path), got {origin!r}")
        return [origin.rstrip("/") for origin in value]

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        if self.default_max_tokens and self.max_tokens_limit and self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must not exceed max_tokens_limit "
                f"({self.max_tokens_limit})"
            )
        if not self.triton_grpc_url:
            self.triton_grpc_url = f"127.0.0.1:{self.local_triton_grpc_port}"
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.home / 'llmserve.db'}"
        return self

    @property
    def local_triton_grpc_port(self) -> int:
        """The gRPC port of a Triton on this host when triton_grpc_url is unset (the launcher's own setting)."""
        return DEFAULT_TRITON_GRPC_PORT

    @property
    def host_is_loopback(self) -> bool:
        return is_loopback(self.host)


def check_address(value: str) -> str:
    if value != "localhost":
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(f"host must be an IP address or 'localhost', got {value!r}") from exc
    return value


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP address (an IPv6 zone such as `%lo` ignored)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


class ConfigFileError(ValueError):
    pass


S = TypeVar("S", bound=Settings)


def load_settings(settings_cls: type[S], config_file: str | Path | None = None, **overrides: Any) -> S:
    """Settings of `settings_cls` (the front-end's, or the launcher's) from the TOML file (`config_file`, else
    $LLMSERVE_CONFIG), the environment and `overrides`."""
    path = config_file or os.environ.get(CONFIG_ENV)
    if not path:
        return settings_cls(**overrides)
    path = Path(path)
    try:
        tomllib.loads(path.read_text())  # fail here with a clear message rather than deep in pydantic-settings
    except OSError as exc:
        raise ConfigFileError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"the config file {path} is not valid TOML: {exc}") from None
    configured = type(
        settings_cls.__name__, (settings_cls,), {"model_config": {**settings_cls.model_config, "toml_file": path}}
    )
    return configured(**overrides)


def mask_url(url: str | None) -> str | None:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def public_view(settings: BaseSettings) -> dict[str, Any]:
    """The effective configuration with secrets masked, for `llmserve config show` and logs."""
    values = settings.model_dump(mode="json")
    for name in SECRET_FIELDS:
        values[name] = mask_url(values[name])
    return values


def get_settings() -> Settings:
    """What `create_app()` uses without arguments: the settings a launcher handed down to its worker processes,
    else the configuration sources as usual."""
    handed_down = os.environ.get(SETTINGS_JSON_ENV)
    if handed_down:
        return Settings.model_validate_json(handed_down)
    return load_settings(Settings)
