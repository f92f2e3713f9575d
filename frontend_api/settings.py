"""All configuration in one place. Environment variables are `LLMSERVE_<FIELD>`; CLI flags override them."""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "llmserve"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSERVE_", extra="forbid", validate_default=True)

    # Front-end (the public API)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    allow_unauthenticated_public_bind: bool = Field(
        False, description="Serve on a non-loopback address although there is no authentication."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Triton (internal). The front-end reaches it over gRPC only; by default the Triton that `serve` starts.
    triton_grpc_url: str | None = Field(None, description="host:port of Triton's gRPC; default 127.0.0.1:<grpc port>")
    triton_http_port: int = Field(8100, ge=1, le=65535)
    triton_grpc_port: int = Field(8101, ge=1, le=65535)
    triton_metrics_port: int = Field(8102, ge=1, le=65535)
    triton_startup_timeout_s: float = Field(600, gt=0)

    # What is served. Each entry is `builtin:smollm2`, a local Hugging Face checkpoint directory, or
    # `ID=DIR` to choose the served model id.
    models: list[str] = ["builtin:smollm2"]
    home: Path = Field(default_factory=default_home, description="Cache for converted checkpoints and repositories.")
    model_repository: Path | None = Field(
        None, description="Serve this already-rendered Triton model repository instead of preparing one."
    )
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    instance_count: int = Field(1, ge=1, le=16)
    max_num_seqs: int = Field(32, ge=1, le=4096, description="Requests decoded together by one engine instance.")
    kv_cache_blocks: int = Field(0, ge=0, description="Paged KV-cache blocks per instance; 0 sizes it automatically.")
    engine_core: Literal["transformers", "fast"] = Field(
        "transformers", description="llm engine core: transformers continuous batching, or ours (CUDA-graph decode)."
    )

    # Request handling
    max_request_bytes: int = Field(1_000_000, ge=1024)
    default_max_tokens: int | None = Field(
        None, ge=1, description="max_tokens when a request sets none; unset means the rest of the context."
    )

    @field_validator("host")
    @classmethod
    def _host_is_an_address(cls, value: str) -> str:
        if value != "localhost":
            try:
                ipaddress.ip_address(value)
            except ValueError as exc:
                raise ValueError(f"host must be an IP address or 'localhost', got {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _default_triton_url(self) -> Settings:
        if self.triton_grpc_url is None:
            self.triton_grpc_url = f"127.0.0.1:{self.triton_grpc_port}"
        return self

    @property
    def host_is_loopback(self) -> bool:
        return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback


@lru_cache
def get_settings() -> Settings:
    return Settings()
