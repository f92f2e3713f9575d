"""`llmserve build --engine trtllm`: HF checkpoint -> TensorRT-LLM engines -> Triton model repository + manifest.

The flow is TensorRT-LLM's documented two-step one, `convert_checkpoint.py` (or `quantize.py` for fp8 / int4_awq)
then `trtllm-build`, rather than the LLM API: the C++ `tensorrtllm` Triton backend serves engine directories,
which `trtllm-build` writes; each step is a plain command we can print (`--dry-run`), log and rerun by hand; and
it is the flow the tensorrtllm_backend documents. TensorRT-LLM cannot be installed here (docs/TENSORRT_LLM.md): a real run
happens in the NGC container; here `--dry-run` prints the commands and renders the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata, util
from pathlib import Path

from build_engines.render import TemplateError
from build_engines.trtllm_repository import (
    ENTRIES,
    XGRAMMAR_TOKENIZER_INFO,
    RepositoryOptions,
    render_trtllm_repository,
)

NGC_IMAGE = "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"  # carries TensorRT-LLM 1.1.0, Triton 2.64
TRTLLM_VERSION = "1.1.0"
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
QUANTIZATIONS = ("none", "fp8", "int4_awq")
# Checkpoint converters in TensorRT-LLM's examples/, by the HF architecture (config.json `architectures`).
CONVERTERS = {
    "LlamaForCausalLM": "models/core/llama/convert_checkpoint.py",
    "MistralForCausalLM": "models/core/llama/convert_checkpoint.py",
    "Qwen2ForCausalLM": "models/core/qwen/convert_checkpoint.py",
}
QUANTIZER = "quantization/quantize.py"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuildOptions:
    model: Path
    output: Path
    dtype: str = "bf16"
    quantization: str = "none"
    tp: int = 1
    max_batch_size: int = 64
    max_num_tokens: int = 8192
    max_input_len: int = 4096
    max_seq_len: int = 8192
    served_model_name: str = ""
    entry: str = "ensemble"
    examples_dir: Path | None = None
    calib_size: int = 512

    def check(self) -> None:
        for name in ("tp", "max_batch_size", "max_num_tokens", "max_input_len", "max_seq_len", "calib_size"):
            if getattr(self, name) < 1:
                raise BuildError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_input_len >= self.max_seq_len:
            raise BuildError("--max-input-len must be smaller than --max-seq-len (which counts prompt + output)")


@dataclass(frozen=True)
class Step:
    title: str
    argv: list[str]


def architecture(model: Path) -> str:
    architectures = json.loads((model / "config.json").read_text()).get("architectures") or ["?"]
    if architectures[0] not in CONVERTERS:
        raise BuildError(
            f"{model}: architecture {architectures[0]} has no converter here; supported: {', '.join(CONVERTERS)}"
        )
    return architectures[0]


def plan(options: BuildOptions) -> list[Step]:
    """The exact commands, in order."""
    examples = options.examples_dir or Path("$TRTLLM_EXAMPLES")
    checkpoint, engines = options.output / "checkpoint", options.output / "engines"
    dtype = DTYPES[options.dtype]
    common = [
        "--model_dir",
        str(options.model),
        "--output_dir",
        str(checkpoint),
        "--dtype",
        dtype,
        "--tp_size",
        str(options.tp),
    ]
    if options.quantization == "none":
        script = examples / CONVERTERS[architecture(options.model)]
        convert = Step("convert the checkpoint", [sys.executable, str(script), *common])
    else:
        extra = ["--kv_cache_dtype", "fp8"] if options.quantization == "fp8" else []
        quantize = [
            sys.executable,
            str(examples / QUANTIZER),
            *common,
            "--qformat",
            options.quantization,
            "--calib_size",
            str(options.calib_size),
            *extra,
        ]
        convert = Step(f"quantize the checkpoint ({options.quantization}, ModelOpt calibration)", quantize)
    build = [
        "trtllm-build",
        "--checkpoint_dir",
        str(checkpoint),
        "--output_dir",
        str(engines),
        "--max_batch_size",
        str(options.max_batch_size),
        "--max_num_tokens",
        str(options.max_num_tokens),
        "--max_input_len",
        str(options.max_input_len),
        "--max_seq_len",
        str(options.max_seq_len),
        "--gemm_plugin",
        "auto",
        "--kv_cache_type",
        "paged",
        # paged context attention: needed by KV-cache reuse and chunked context in the tensorrt_llm model
        "--use_paged_context_fmha",
        "enable",
        "--workers",
        str(options.tp),
    ]
    return [convert, Step("build the engines", build)]


def missing_tensorrt_llm(options: BuildOptions) -> str | None:
    """Why a real build cannot run in this environment, with what to do instead; None if it can."""
    problems = []
    if util.find_spec("tensorrt_llm") is None or shutil.which("trtllm-build") is None:
        problems.append(
            "TensorRT-LLM is not installed here (it installs only from NVIDIA's index or comes in the NGC container)"
        )
    if options.examples_dir is None:
        problems.append("the TensorRT-LLM examples folder is not given (--trtllm-examples or $TRTLLM_EXAMPLES)")
    elif not options.examples_dir.is_dir():
        problems.append(f"--trtllm-examples {options.examples_dir} is not a directory")
    if not problems:
        return None
    return (
        "cannot build TensorRT-LLM engines: " + "; ".join(problems) + ".\n"
        f"Run the build inside the NGC container {NGC_IMAGE} (TensorRT-LLM {TRTLLM_VERSION}) on a GPU machine:\n"
        f"  git clone --depth 1 --branch v{TRTLLM_VERSION} https://github.com/NVIDIA/TensorRT-LLM.git trtllm-src\n"
        f'  docker run --rm --gpus all --ipc=host -v "$PWD:$PWD" -w "$PWD" -e TRTLLM_EXAMPLES="$PWD/trtllm-src/examples" '
        f"{NGC_IMAGE} \\\n    bash -c 'pip install -e . && llmserve build --engine trtllm ...'\n"
        "(docs/TENSORRT_LLM.md). Add --dry-run to print the commands and render the repository without it."
    )


def run_step(index: int, total: int, step: Step) -> float:
    print(f"llmserve build: [{index}/{total}] {step.title}\n  $ {shlex.join(step.argv)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(step.argv)  # the tools print their own progress to our terminal
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise BuildError(f"step {index} ({step.title}) failed with exit code {result.returncode} after {elapsed:.0f} s")
    print(f"llmserve build: [{index}/{total}] done in {elapsed:.0f} s", flush=True)
    return elapsed


def copy_tokenizer(model: Path, target: Path) -> Path:
    """Tokenizer and configs only (no weights): the repository then needs nothing from the checkpoint."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in model.iterdir():
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(path, target / path.name)
    write_xgrammar_tokenizer_info(target)
    return target


def write_xgrammar_tokenizer_info(tokenizer_dir: Path) -> Path:
    """What the C++ backend's guided decoder needs of the tokenizer (TensorRT-LLM's _xgrammar_tokenizer_info for a
    fast tokenizer): the vocabulary in id order, the tokenizer's JSON, and the end-of-sequence id."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    eos = config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    info = {
        "encoded_vocab": [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])],
        "tokenizer_str": tokenizer.to_str(),
        "stop_token_ids": [vocab[eos]] if eos in vocab else [],
    }
    path = tokenizer_dir / XGRAMMAR_TOKENIZER_INFO
    path.write_text(json.dumps(info))
    return path


def _versions() -> dict[str, str | None]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    tools = {name: version(name) for name in ("tensorrt_llm", "tensorrt", "nvidia-modelopt", "torch", "transformers")}
    tools["triton_container"] = os.environ.get("NVIDIA_TRITON_SERVER_VERSION")  # set in NGC Triton images
    tools["python"] = platform.python_version()
    return tools


def build(options: BuildOptions, dry_run: bool) -> Path:
    """Run (or print) the pipeline, render the repository, write the manifest; return the repository."""
    from build_engines.checkpoints import _sha256, check_checkpoint_dir  # (tqdm there: not needed for --help)

    options.check()
    check_checkpoint_dir(options.model)
    steps = plan(options)
    if dry_run:
        print("llmserve build: dry run; these commands would run:")
        for index, step in enumerate(steps, 1):
            print(f"  [{index}/{len(steps)}] {step.title}\n  $ {shlex.join(step.argv)}")
    else:
        if problem := missing_tensorrt_llm(options):
            raise BuildError(problem)
        options.output.mkdir(parents=True, exist_ok=True)
        seconds = [run_step(index, len(steps), step) for index, step in enumerate(steps, 1)]
    engines = options.output / "engines"
    repository = render_trtllm_repository(
        options.output / "model_repository",
        RepositoryOptions(
            served_model_name=options.served_model_name or options.model.name,
            tokenizer_dir=copy_tokenizer(options.model, options.output / "tokenizer"),
            engine_dir=engines,
            max_model_len=options.max_seq_len,
            max_batch_size=options.max_batch_size,
            max_input_len=options.max_input_len,
            entry=options.entry,
        ),
    )
    manifest = {
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "engine": "tensorrt_llm",
        "dry_run": dry_run,
        "model": str(options.model),
        "served_model_name": options.served_model_name or options.model.name,
        "entry": options.entry,
        "dtype": options.dtype,
        "quantization": options.quantization,
        "tp": options.tp,
        "build_flags": {k: str(v) for k, v in asdict(options).items()},
        "commands": [shlex.join(step.argv) for step in steps],
        "step_seconds": None if dry_run else [round(s, 1) for s in seconds],
        "tools": _versions(),
        "container_image": NGC_IMAGE,
        "engine_files": {}
        if dry_run
        else {str(p.relative_to(engines)): _sha256(p) for p in sorted(engines.rglob("*")) if p.is_file()},
        "model_repository": str(repository),
    }
    (options.output / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return repository


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", required=True, choices=["trtllm"], help="what to build (TensorRT-LLM engines)")
    parser.add_argument("--model", required=True, help="a local Hugging Face checkpoint directory")
    parser.add_argument(
        "--output",
        required=True,
        help="writes checkpoint/, engines/, tokenizer/, model_repository/ and manifest.json here",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default="none",
        help="fp8 (Hopper or newer; also an fp8 KV cache) or int4_awq (ModelOpt calibration)",
    )
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel size (GPUs per engine)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-num-tokens", type=int, default=8192, help="tokens per engine step (chunked context)")
    parser.add_argument("--max-input-len", type=int, default=4096)
    parser.add_argument("--max-seq-len", type=int, default=8192, help="prompt + output tokens (the served context)")
    parser.add_argument("--served-model-name", default="", help="the OpenAI model id (default: the folder name)")
    parser.add_argument(
        "--entry",
        choices=ENTRIES,
        default="ensemble",
        help="which model the front-end serves: the ensemble or the BLS model",
    )
    parser.add_argument(
        "--trtllm-examples",
        default=os.environ.get("TRTLLM_EXAMPLES"),
        help=f"TensorRT-LLM's examples/ folder (v{TRTLLM_VERSION}), for the checkpoint converters "
        "(default $TRTLLM_EXAMPLES)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands and render the repository; needs no TensorRT-LLM"
    )


def run_build(args: argparse.Namespace) -> int:
    options = BuildOptions(
        model=Path(args.model).expanduser().resolve(),
        output=Path(args.output).expanduser().resolve(),
        dtype=args.dtype,
        quantization=args.quantization,
        tp=args.tp,
        max_batch_size=args.max_batch_size,
        max_num_tokens=args.max_num_tokens,
        max_input_len=args.max_input_len,
        max_seq_len=args.max_seq_len,
        served_model_name=args.served_model_name,
        entry=args.entry,
        examples_dir=Path(args.trtllm_examples).expanduser().resolve() if args.trtllm_examples else None,
    )
    from build_engines.checkpoints import CheckpointError

    try:
        repository = build(options, args.dry_run)
    except (BuildError, CheckpointError, TemplateError, ValueError) as exc:
        print(f"llmserve build: {exc}", file=sys.stderr)
        return 2
    print(
        f"llmserve build: model repository {repository} (manifest: {options.output / 'manifest.json'})\n"
        f"  serve it: llmserve serve --model-repository {repository}   (Triton from the NGC container)"
    )
    return 0
