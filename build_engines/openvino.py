"""The OpenVINO engine core's checkpoint: a Hugging Face checkpoint exported to OpenVINO IR with compressed weights
(optimum-intel + NNCF), cached beside the checkpoint and verified against it before it is used.

optimum-intel 2.2 needs transformers < 5.6, while the rest of the stack (the GGUF reader included) needs a newer
one: the exporter runs in a subprocess over a small folder of its own pinned packages (EXPORT_TOOLS, installed
once with `pip --target`, no dependencies), in front of this environment's torch, NNCF and OpenVINO.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from build_engines.checkpoints import file_sizes, files_intact

WEIGHT_FORMATS = ("int8", "int4", "fp16")
DEFAULT_WEIGHT_FORMAT = "int8"
EXPORT_TOOLS = ("transformers==5.5.4", "optimum-intel==2.2.0", "optimum==2.3.0", "huggingface-hub==1.21.0",
                "tokenizers==0.22.2")  # fmt: skip
EXPORT_RECORD = "llmserve-export.json"
REQUIRED_FILES = ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "tokenizer.json", "config.json")
# The export's greedy next token must agree with the checkpoint's at this share of the positions of VERIFY_TEXT.
MIN_TOP1_AGREEMENT = {"int8": 0.9, "int4": 0.7, "fp16": 0.95}  # measured: 0.98, 0.76, -
VERIFY_TEXT = (
    "The capital of France is Paris. Water boils at 100 degrees Celsius at sea level. The largest planet in the "
    "solar system is Jupiter, and the closest star to the Earth is the Sun."
)


class ExportError(RuntimeError):
    pass


def ensure_openvino_ir(checkpoint: Path, home: Path, weight_format: str = DEFAULT_WEIGHT_FORMAT) -> Path:
    """The OpenVINO IR of `checkpoint` (exported once, reused while its record matches the checkpoint)."""
    if weight_format not in WEIGHT_FORMATS:
        raise ExportError(f"weight_format must be one of {', '.join(WEIGHT_FORMATS)}, not {weight_format!r}")
    source = _fingerprint(checkpoint)
    target = home / "openvino" / f"{checkpoint.name}-{source[:12]}-{weight_format}"
    if _is_current(target, source):
        return target
    print(
        f"Exporting {checkpoint.name} to OpenVINO IR with {weight_format} weights in {target} (once, about a minute)",
        flush=True,
    )
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.monotonic()
    steps = tqdm(total=4, desc="export", unit="step", bar_format="{desc}: {n}/{total} {postfix} [{elapsed}]")
    steps.set_postfix_str("export tools")
    tools = _export_tools(home)
    steps.update()
    steps.set_postfix_str(f"export and compress weights ({weight_format})")
    _export(checkpoint, staging, weight_format, tools)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (checkpoint / name).is_file():  # the checkpoint's own files, not the exporter's re-saved copies
            shutil.copy2(checkpoint / name, staging / name)
    steps.update()
    steps.set_postfix_str("verify against the checkpoint")
    agreement = verify_export(checkpoint, staging, MIN_TOP1_AGREEMENT[weight_format])
    steps.update()
    record = {
        "source": {"checkpoint": str(checkpoint), "fingerprint": source},
        "weight_format": weight_format,
        "tools": list(EXPORT_TOOLS),
        "top1_agreement": round(agreement, 4),
        "files": file_sizes(staging),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
    }
    (staging / EXPORT_RECORD).write_text(json.dumps(record, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    steps.set_postfix_str(f"done (greedy agreement with the checkpoint {agreement:.0%})")
    steps.update()
    steps.close()
    return target


def _fingerprint(checkpoint: Path) -> str:
    """Names, sizes and modification times of the checkpoint's files: changes when the checkpoint does."""
    digest = hashlib.sha256()
    for path in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _is_current(target: Path, fingerprint: str) -> bool:
    record_path = target / EXPORT_RECORD
    if not record_path.is_file():
        return False
    record = json.loads(record_path.read_text())
    if record.get("source", {}).get("fingerprint") != fingerprint or record.get("tools") != list(EXPORT_TOOLS):
        return False
    files = record.get("files", {})
    return all(name in files for name in REQUIRED_FILES) and files_intact(target, files)


def _export_tools(home: Path) -> Path:
    """The folder of pinned exporter packages (installed on first use)."""
    tag = hashlib.sha256("\n".join(EXPORT_TOOLS).encode()).hexdigest()[:12]
    folder = home / "tools" / f"openvino-export-{tag}"
    done = folder / ".installed"
    if done.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(folder), *EXPORT_TOOLS]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ExportError(f"could not install the OpenVINO exporter ({' '.join(command)}):\n{result.stderr[-2000:]}")
    done.touch()
    return folder


def _export(checkpoint: Path, output: Path, weight_format: str, tools: Path) -> None:
    command = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model", str(checkpoint)]
    command += ["--task", "text-generation-with-past", "--weight-format", weight_format]
    if weight_format == "int4":
        command += ["--group-size", "64", "--ratio", "0.8"]  # 64 divides small hidden sizes; 20 % of layers stay int8
    command.append(str(output))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tools), os.environ.get("PYTHONPATH")]))}
    log_path = output.with_name(output.name + ".log")
    with log_path.open("w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise ExportError(f"the OpenVINO export failed (log: {log_path}):\n{tail}")
    log_path.unlink()


def ir_logits(ir_dir: Path, input_ids: list[int]):
    """The exported model's logits (numpy, [tokens, vocab]) for one sequence, computed by the OpenVINO runtime."""
    import numpy as np
    import openvino as ov

    compiled = ov.Core().compile_model(str(ir_dir / "openvino_model.xml"), "CPU")
    request = compiled.create_infer_request()
    request.reset_state()
    ids = np.array([input_ids], dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    if any(port.get_any_name() == "beam_idx" for port in compiled.inputs):
        inputs["beam_idx"] = np.zeros(1, dtype=np.int32)
    return request.infer(inputs)["logits"][0].astype(np.float32)


def verify_export(checkpoint: Path, ir_dir: Path, min_agreement: float) -> float:
    """The share of VERIFY_TEXT's positions where the export's and the checkpoint's greedy next tokens agree."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer(VERIFY_TEXT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].argmax(-1).numpy()
    exported = ir_logits(ir_dir, ids).argmax(-1)
    agreement = float((reference == exported).mean())
    if agreement < min_agreement:
        raise ExportError(
            f"the OpenVINO export in {ir_dir} agrees with {checkpoint} on {agreement:.0%} of greedy next tokens "
            f"(at least {min_agreement:.0%} expected): the weight compression broke the model"
        )
    return agreement
