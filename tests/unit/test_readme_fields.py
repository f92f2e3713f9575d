"""The README's table of the sampling fields each engine honours is the engine contract's `honoured_by`, row by row
(regenerate it with `python tests/unit/test_readme_fields.py`)."""

from __future__ import annotations

from pathlib import Path

import engine_contract as contract

README = Path(__file__).resolve().parents[2] / "README.md"
# The OpenAI / vLLM request field, and the contract input that carries it.
FIELDS = (
    ("`temperature`, `top_p`, `top_k`", contract.TEMPERATURE),
    ("`seed`", contract.SEED),
    ("`presence_penalty`, `frequency_penalty`", contract.PRESENCE_PENALTY),
    ("`repetition_penalty`", contract.REPETITION_PENALTY),
    ("`min_tokens`, `ignore_eos`", contract.MIN_TOKENS),
    ("`stop`", contract.STOP_WORDS),
    ("`stop_token_ids`", contract.STOP_TOKEN_IDS),
    ("`bad_words`", contract.BAD_WORDS),
    ("`logit_bias`", contract.EMBEDDING_BIAS_TOKEN_IDS),
    ("`n`", contract.NUM_RETURN_SEQUENCES),
    ("`logprobs` (the sampled token)", contract.RETURN_LOG_PROBS),
    ("`top_logprobs` (chat), `logprobs: N` (completions)", contract.NUM_TOP_LOG_PROBS),
    ("`echo` with `logprobs` (completions)", contract.RETURN_PROMPT_LOG_PROBS),
    ("token-id prompts (completions)", contract.INPUT_IDS),
    (
        "`response_format`, vLLM's `structured_outputs` / `guided_*`, `tool_choice` required or named",
        contract.GUIDED_DECODING_GUIDE_TYPE,
    ),
)
NAMES = {
    contract.OPENVINO_PAGED: "`openvino_paged` (CPU default)",
    contract.OPENVINO: "`openvino` (GenAI)",
    contract.FAST: "`fast` (GPU)",
    contract.TENSORRT_LLM: "TensorRT-LLM",
}


def table() -> str:
    head = "| field | contract input | " + " | ".join(NAMES[e] for e in contract.ENGINES) + " |"
    rule = "| --- | --- |" + " :-: |" * len(contract.ENGINES)
    rows = [
        f"| {field} | `{spec.name}` | "
        + " | ".join("yes" if e in spec.honoured_by else "—" for e in contract.ENGINES)
        + " |"
        for field, spec in FIELDS
    ]
    return "\n".join([head, rule, *rows])


def test_the_readme_table_is_the_contracts():
    assert table() in README.read_text(), "README.md's field table is stale: paste `python " + __file__ + "`"


if __name__ == "__main__":
    print(table())
