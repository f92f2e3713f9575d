"""Render the TensorRT-LLM Triton model repository from our `${var}` templates in model_repository/.

Five models: preprocessing -> tensorrt_llm (C++ `tensorrtllm` backend) -> postprocessing, wired by `ensemble`,
and `tensorrt_llm_bls` (the same pipeline in one python model). Exactly one of ensemble / tensorrt_llm_bls gets a
`served_model_name` (the entry): the front-end serves that one, with no code of its own for TensorRT-LLM.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import engine_contract
from build_engines.render import render_model

TEMPLATES = Path(__file__).resolve().parent.parent / "model_repository"
MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls")
ENTRIES = ("ensemble", "tensorrt_llm_bls")
# One source for incremental detokenization: the llm engine's module, copied into the models that stream text.
SHARED_MODULE = TEMPLATES / "llm" / "1" / "text_stream.py"
MODELS_WITH_SHARED_MODULE = ("postprocessing", "tensorrt_llm_bls")
SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")
# The C++ backend's xgrammar guided decoder reads the vocabulary from this file in the tokenizer folder
# (build_engines/trtllm.py writes it, as TensorRT-LLM's generate_xgrammar_tokenizer_info.py does).
XGRAMMAR_TOKENIZER_INFO = "xgrammar_tokenizer_info.json"


@dataclass(frozen=True)
class RepositoryOptions:
    served_model_name: str
    tokenizer_dir: Path
    engine_dir: Path
    max_model_len: int
    max_batch_size: int
    max_input_len: int
    entry: str = "ensemble"
    kv_cache_free_gpu_mem_fraction: float = 0.9
    enable_kv_cache_reuse: bool = True
    enable_chunked_context: bool = True
    batch_scheduler_policy: str = "guaranteed_no_evict"
    cancellation_check_period_ms: int = 100
    max_queue_delay_microseconds: int = 0
    preprocessing_instance_count: int = 1
    bls_instance_count: int = 1
    stream_state_ttl_s: int = 600

    def __post_init__(self):
        if self.entry not in ENTRIES:
            raise ValueError(f"entry must be one of {', '.join(ENTRIES)}, not {self.entry!r}")
        if self.batch_scheduler_policy not in SCHEDULER_POLICIES:
            raise ValueError(f"batch_scheduler_policy must be one of {', '.join(SCHEDULER_POLICIES)}")
        if not 0 < self.kv_cache_free_gpu_mem_fraction <= 1:
            raise ValueError("kv_cache_free_gpu_mem_fraction must be in (0, 1]")
        if self.max_input_len >= self.max_model_len:
            raise ValueError("max_input_len must be smaller than max_model_len")
        for name in (
            "max_model_len",
            "max_batch_size",
            "max_input_len",
            "preprocessing_instance_count",
            "bls_instance_count",
            "cancellation_check_period_ms",
            "stream_state_ttl_s",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


def _bool(value: bool) -> str:
    return "true" if value else "false"


def model_values(options: RepositoryOptions) -> dict[str, dict[str, object]]:
    """The values of each model's template (render refuses a missing one and an unused one)."""
    batch = {"triton_max_batch_size": options.max_batch_size}
    served = {
        "tokenizer_dir": options.tokenizer_dir,
        "max_model_len": options.max_model_len,
        "capabilities": engine_contract.capabilities(engine_contract.TENSORRT_LLM),
    }

    def entry_name(model: str) -> str:
        return options.served_model_name if options.entry == model else ""

    return {
        "preprocessing": {
            **batch,
            "tokenizer_dir": options.tokenizer_dir,
            "add_special_tokens": "true",
            "max_input_len": options.max_input_len,
            "preprocessing_instance_count": options.preprocessing_instance_count,
        },
        "tensorrt_llm": {
            **batch,
            "engine_dir": options.engine_dir,
            "max_queue_delay_microseconds": options.max_queue_delay_microseconds,
            "batch_scheduler_policy": options.batch_scheduler_policy,
            "kv_cache_free_gpu_mem_fraction": options.kv_cache_free_gpu_mem_fraction,
            "enable_kv_cache_reuse": _bool(options.enable_kv_cache_reuse),
            "enable_chunked_context": _bool(options.enable_chunked_context),
            "cancellation_check_period_ms": options.cancellation_check_period_ms,
            "xgrammar_tokenizer_info_path": options.tokenizer_dir / XGRAMMAR_TOKENIZER_INFO,
        },
        "postprocessing": {
            **batch,
            "tokenizer_dir": options.tokenizer_dir,
            "skip_special_tokens": "true",
            "stream_state_ttl_s": options.stream_state_ttl_s,
        },
        "ensemble": {**batch, **served, "ensemble_served_model_name": entry_name("ensemble")},
        "tensorrt_llm_bls": {
            **batch,
            **served,
            "bls_served_model_name": entry_name("tensorrt_llm_bls"),
            "bls_instance_count": options.bls_instance_count,
        },
    }


def render_trtllm_repository(repository: Path, options: RepositoryOptions) -> Path:
    """Write the five models into `repository` (replacing it) and return it."""
    shutil.rmtree(repository, ignore_errors=True)
    repository.mkdir(parents=True)
    for model, values in model_values(options).items():
        target = render_model(TEMPLATES / model, repository / model, values)
        (target / "1").mkdir(exist_ok=True)  # Triton needs a version folder, also for the ensemble and C++ model
        if model in MODELS_WITH_SHARED_MODULE:
            shutil.copy2(SHARED_MODULE, target / "1" / SHARED_MODULE.name)
    return repository
