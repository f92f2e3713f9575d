"""Write perf_analyzer's --input-data JSON for the `llm` model (Triton gRPC streaming, decoupled).

Each entry is one request of the engine contract (engine_contract/): a prompt of about 128 tokens (the same
prompts as `llmserve bench`, distinct per entry so that no two requests share a prefix), max_tokens = min_tokens
= 128 (end-of-sequence ignored: every request generates exactly 128 tokens), greedy, streamed. perf_analyzer
cycles through the entries. tests/unit/test_perf_analyzer_inputs.py checks the committed file against the
contract and against this script, so neither can drift.

    python bench/nvidia_tools/perf_analyzer_inputs.py            # rewrites bench/nvidia_tools/perf_analyzer_inputs.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # engine_contract and llmserve.bench, run from anywhere

import engine_contract as contract  # noqa: E402
from llmserve.bench.loadgen import make_prompt  # noqa: E402

DEFAULT_OUT = Path(__file__).with_suffix(".json")


def request_inputs(prompt: str, output_tokens: int) -> dict[str, object]:
    """One request's tensors by contract name, as values (the batch dimension is perf_analyzer's)."""
    return {
        contract.TEXT_INPUT.name: prompt,
        contract.MAX_TOKENS.name: output_tokens,
        contract.MIN_TOKENS.name: output_tokens,  # no end of sequence before max_tokens: fixed-length outputs
        contract.TEMPERATURE.name: 0.0,
        contract.STREAM.name: True,
    }


def perf_analyzer_data(input_tokens: int, output_tokens: int, entries: int) -> dict:
    """perf_analyzer's format: {"data": [{name: [value, ...], ...}, ...]}, every tensor a flat list of its
    elements (dims [1]: one element)."""
    data = []
    for index in range(entries):
        inputs = request_inputs(make_prompt(input_tokens, index), output_tokens)
        data.append({name: [value] for name, value in inputs.items()})
    return {"data": data}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-tokens", type=int, default=128, help="prompt length in tokens (default 128)")
    parser.add_argument("--output-tokens", type=int, default=128, help="tokens generated per request (default 128)")
    parser.add_argument("--entries", type=int, default=64, help="distinct requests perf_analyzer cycles through")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    data = perf_analyzer_data(args.input_tokens, args.output_tokens, args.entries)
    entries = ",\n".join(json.dumps(entry) for entry in data["data"])  # one request a line
    args.out.write_text('{"data": [\n' + entries + "\n]}\n")
    print(f"{args.out}: {args.entries} requests, {args.input_tokens} prompt / {args.output_tokens} output tokens")


if __name__ == "__main__":
    main()
