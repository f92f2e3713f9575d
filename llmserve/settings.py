"""The launcher's settings: the front-end's (frontend_api/settings.py) plus Triton, the engine and the models.

One class for the whole command line, so that `--config`, LLMSERVE_* variables and `config show` cover every key
the stack has; each front-end process receives only the front-end's part (`frontend()`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from build_engines.prepare import ENGINE_PROCESS_CORES
from engine_contract import FAST, LLM_CORES, OPENVINO_IR_CORES, OPENVINO_PAGED
from frontend_api.settings import Settings, check_address

MAX_AUTO_WORKERS = 8


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> float:
    """CPUs this process may use: its affinity mask, lowered by a cgroup v2 CPU quota (a container's limit)."""
    try:
        cpus: float = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cpus


def auto_workers(settings: LauncherSettings) -> tuple[int, str]:
    """The default number of front-end processes, and why."""
    # Per-caller budgets a second process would double: rpm/tpm unless Redis shares them, streams always (they
    # are counted in each process).
    in_memory = [name for name in ("rate_limit_rpm", "rate_limit_tpm") if getattr(settings, name)]
    in_memory = [] if settings.redis_url else in_memory
    if settings.max_streams_per_key:
        in_memory.append("max_streams_per_key")
    if in_memory:
        return 1, f"{', '.join(in_memory)} counted in this process: one process keeps one budget"
    cpus = available_cpus()
    workers = max(1, min(MAX_AUTO_WORKERS, int(cpus // 2)))
    return workers, f"auto: half of {cpus:g} CPUs, 1 to {MAX_AUTO_WORKERS}"


class LauncherSettings(Settings):
    _workers_reason: str = PrivateAttr("as configured")

    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Front-end processes sharing the port (uvicorn workers); 0 (the default) picks half the CPUs "
        "this process may use, 1 to 8, or 1 when per-key limits are kept in memory (no redis_url).",
    )

    # Triton, started and supervised by `llmserve serve` / `llmserve triton`
    triton_address: str = Field(
        "127.0.0.1",
        description="Address of `llmserve triton` (Triton alone, e.g. 0.0.0.0 "
        "in a container); `llmserve serve` keeps its Triton on loopback.",
    )
    triton_http_port: int = Field(8100, ge=1, le=65535)
    triton_grpc_port: int = Field(8101, ge=1, le=65535)
    triton_metrics_port: int = Field(8102, ge=1, le=65535)
    triton_startup_timeout_s: float = Field(600, gt=0)
    triton_restart_max_backoff_s: float = Field(
        30,
        ge=1,
        description="`serve` restarts a Triton that died, waiting 1, 2, 4 ... s between attempts, at most this long.",
    )
    triton_restart_max_attempts: int = Field(
        0,
        ge=0,
        description="`serve` exits with code 1 after this many failed "
        "Triton restarts in a row (for a process manager to act on); 0: never.",
    )

    # What is served. Each entry is `builtin:smollm2`, a local Hugging Face checkpoint directory, or
    # `ID=DIR` to choose the served model id. Converted checkpoints and repositories are cached under `home`.
    models: list[str] = ["builtin:smollm2"]
    model_repository: Path | None = Field(
        None, description="Serve this already-rendered Triton model repository instead of preparing one."
    )
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    instance_count: int = Field(1, ge=1, le=16)
    max_num_seqs: int = Field(32, ge=1, le=4096, description="Requests decoded together by one engine instance.")
    kv_cache_blocks: int = Field(0, ge=0, description="Paged KV-cache blocks per instance; 0 sizes it automatically.")
    engine_core: str | None = Field(
        None,
        description="llm engine core: openvino_paged (ours over OpenVINO's runtime, CPU: every sampling field; the "
        "default on cpu), openvino (OpenVINO GenAI's pipeline, CPU) or fast (ours, torch: CUDA-graph decode; the "
        "default on cuda).",
    )
    prefix_caching: bool = Field(
        False,
        description="Reuse the KV cache of a prompt prefix seen before (faster session turns, a shared system prompt "
        "prefilled once). Unset: on with the fast core (as vLLM), off with the openvino_paged and openvino cores. "
        "With it on, the same seed can sample different text depending on what is cached.",
    )
    engine_process: bool = Field(
        False,
        description="Run the llm engine core in a child process of Triton's python model (engine_process.py), so "
        "that sending responses does not compete with the engine's loop for one GIL. Unset: on with the fast core, "
        'off with the openvino_paged and openvino cores (docs/PERFORMANCE.md, "The engine in its own process").',
    )
    weight_format: Literal["int8", "int4", "fp16"] = Field(
        "int8", description="Weights of the CPU cores' OpenVINO export (int4 is faster and answers less well)."
    )

    @field_validator("engine_core")
    @classmethod
    def _known_core(cls, value: str | None) -> str | None:
        if value is not None and value not in LLM_CORES:
            raise ValueError(f"must be one of {', '.join(LLM_CORES)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _core_for_device(self) -> LauncherSettings:
        if self.engine_core is None:
            self.engine_core = OPENVINO_PAGED if self.device == "cpu" else FAST
        elif self.engine_core in OPENVINO_IR_CORES and self.device != "cpu":
            raise ValueError(f"engine_core {self.engine_core} runs on the CPU; use engine_core fast with device cuda")
        if "prefix_caching" not in self.model_fields_set:  # unset: on with the fast core only (as vLLM)
            self.prefix_caching = self.engine_core == FAST
        if "engine_process" not in self.model_fields_set:  # unset: by measurement (docs/PERFORMANCE.md)
            self.engine_process = self.engine_core in ENGINE_PROCESS_CORES
        return self

    @field_validator("triton_address")
    @classmethod
    def _triton_address(cls, value: str) -> str:
        return check_address(value)

    @model_validator(mode="after")
    def _workers_share_limits(self) -> LauncherSettings:
        if self.workers == 0:
            self.workers, self._workers_reason = auto_workers(self)
        else:
            self._workers_reason = "as configured"
        if self.workers > 1 and (self.rate_limit_rpm or self.rate_limit_tpm) and not self.redis_url:
            raise ValueError(
                "workers > 1 with rate_limit_rpm / rate_limit_tpm needs redis_url: each worker process "
                "would otherwise keep a budget of its own"
            )
        return self

    @property
    def workers_reason(self) -> str:
        return self._workers_reason

    @property
    def local_triton_grpc_port(self) -> int:
        return self.triton_grpc_port

    def frontend(self) -> Settings:
        """The front-end's part, as handed to its worker processes."""
        return Settings.model_validate(self.model_dump(include=set(Settings.model_fields)))
