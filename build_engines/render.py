"""Render Triton model folders from `${var}` templates; any variable left unfilled is an error that names it."""

from __future__ import annotations

import re
import shutil
import string
from pathlib import Path

import engine_contract

TEMPLATE_SUFFIXES = {".pbtxt"}
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


class TemplateError(ValueError):
    pass


def contract_tensors_block(engine: str | None = None) -> str:
    """The `input [...]` and `output [...]` blocks of a model that implements the engine contract: all of it, or
    the tensors `engine` honours."""

    def line(spec: engine_contract.TensorSpec) -> str:
        optional = " optional: true" if spec.optional else ""
        dims = ", ".join(map(str, spec.dims))
        return f'  {{ name: "{spec.name}" data_type: {spec.triton_type} dims: [ {dims} ]{optional} }}'

    def block(kind: str, specs: tuple[engine_contract.TensorSpec, ...]) -> str:
        return f"{kind} [\n" + ",\n".join(map(line, specs)) + "\n]"

    inputs, outputs = engine_contract.INPUTS, engine_contract.OUTPUTS
    if engine is not None:
        inputs, outputs = engine_contract.honoured(engine), engine_contract.honoured(engine, outputs)
    return block("input", inputs) + "\n\n" + block("output", outputs)


# Placeholders any template may use without being given a value: they are rendered from the repository itself.
BUILT_IN_VALUES = {
    "engine_contract_tensors": contract_tensors_block,
    "trtllm_contract_tensors": lambda: contract_tensors_block(engine_contract.TENSORRT_LLM),
}


def fill(text: str, values: dict[str, object], source: str) -> str:
    """Substitute `${name}`; raise naming every placeholder that has no value (and every unused value)."""
    wanted = set(_PLACEHOLDER.findall(text))
    values = {**{name: make() for name, make in BUILT_IN_VALUES.items() if name in wanted}, **values}
    missing = sorted(wanted - values.keys())
    if missing:
        raise TemplateError(f"{source}: no value for {', '.join('${' + m + '}' for m in missing)}")
    unused = sorted(values.keys() - wanted)
    if unused:
        raise TemplateError(f"{source}: values given for variables the template does not use: {', '.join(unused)}")
    rendered = string.Template(text).substitute({k: str(v) for k, v in values.items()})
    leftover = _PLACEHOLDER.findall(rendered)
    if leftover:  # a value that itself contained ${...}
        raise TemplateError(f"{source}: unfilled after rendering: {', '.join(leftover)}")
    return rendered


def render_model(template_dir: Path, output_dir: Path, values: dict[str, object]) -> Path:
    """Copy a model folder, filling its templates. Returns the rendered folder."""
    if output_dir.exists():
        shutil.rmtree(output_dir)
    for source in sorted(template_dir.rglob("*")):
        if "__pycache__" in source.parts or source.is_dir():
            continue
        target = output_dir / source.relative_to(template_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix in TEMPLATE_SUFFIXES:
            target.write_text(fill(source.read_text(), values, str(source)))
        else:
            shutil.copy2(source, target)
    return output_dir
