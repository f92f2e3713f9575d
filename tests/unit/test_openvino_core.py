"""The default CPU engine core (openvino_core.py) with the real SmolLM2 exported to int8 OpenVINO IR, against the
fp32 Hugging Face checkpoint it came from: quality kept, per-request seeds, min_tokens, cancellation, the export's
cache. (The behaviour every core shares is in test_engine_cores.py.)"""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import torch

from build_engines.openvino import EXPORT_RECORD, ExportError, _is_current, ensure_openvino_ir, ir_logits

# Short factual questions the fp32 checkpoint answers right at temperature 0, and the fact its answer contains.
FACTS = {
    "What is the capital of France?": "Paris",
    "What is 2 + 2?": "4",
    "How many days are in a week?": "7",
    "What is the boiling point of water in Celsius?": "100",
    "What is the chemical symbol for gold?": "Au",
    "What language is spoken in Brazil?": "Portuguese",
    "Who wrote Romeo and Juliet?": "Shakespeare",
}
ANSWER_TOKENS = 32
# Mean log-likelihood per token of TEXT: the int8 export may differ from the fp32 checkpoint by at most this many
# nats (0.05 nats is a 5 % change of perplexity; measured: +0.013).
LOG_LIKELIHOOD_TOLERANCE = 0.05
TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after the "
    "engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. Locally nicknamed the "
    "Iron Lady, it was constructed as the centrepiece of the 1889 World's Fair."
)


@pytest.fixture(scope="module")
def engine(openvino_checkpoint):
    from openvino_core import OpenVINOEngine

    core = OpenVINOEngine(str(openvino_checkpoint), max_num_seqs=8, max_model_len=512)
    yield core
    core.shutdown()


@pytest.fixture(scope="module")
def reference(checkpoint_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32, local_files_only=True).eval()


def chat(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def submit(engine, prompt: str, cancel_after: int | None = None, **sampling):
    """Submit one request; return (event set on its last update, the list its updates go to)."""
    from core import Sampling

    done, updates = threading.Event(), []

    def sink(update):
        updates.append(update)
        if update.finish_reason:
            done.set()

    def is_cancelled():
        return cancel_after is not None and len(updates) >= cancel_after

    engine.submit(f"t-{id(updates)}", prompt, Sampling(**sampling), sink, is_cancelled)
    return done, updates


def generate(engine, prompt: str, **sampling) -> str:
    done, updates = submit(engine, prompt, **sampling)
    assert done.wait(120), "no final update in 120 s"
    assert updates[-1].finish_reason in ("stop", "length"), updates[-1]
    return "".join(u.text for u in updates)


def test_greedy_answers_to_factual_questions_keep_the_fp32_checkpoints_facts(engine, reference, tokenizer):
    for question, fact in FACTS.items():
        prompt = chat(tokenizer, question)
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected_ids = reference.generate(ids, max_new_tokens=ANSWER_TOKENS, do_sample=False)[0, ids.shape[1] :]
        expected = tokenizer.decode(expected_ids, skip_special_tokens=True)
        assert fact in expected, f"the fp32 reference itself no longer says {fact!r}: {expected!r}"
        answer = generate(engine, prompt, max_tokens=ANSWER_TOKENS, temperature=0.0)
        assert fact in answer, f"{question} int8: {answer!r}; fp32: {expected!r}"


def test_mean_log_likelihood_stays_within_tolerance_of_the_fp32_checkpoint(openvino_checkpoint, reference, tokenizer):
    ids = tokenizer(TEXT)["input_ids"]
    targets = np.array(ids[1:])
    with torch.no_grad():
        fp32 = torch.log_softmax(reference(torch.tensor([ids])).logits[0, :-1].float(), -1).numpy()
    int8 = torch.log_softmax(torch.from_numpy(ir_logits(openvino_checkpoint, ids))[:-1], -1).numpy()
    rows = np.arange(len(targets))
    fp32_mean, int8_mean = fp32[rows, targets].mean(), int8[rows, targets].mean()
    assert abs(int8_mean - fp32_mean) <= LOG_LIKELIHOOD_TOLERANCE, (fp32_mean, int8_mean)
    assert (fp32.argmax(-1) == int8.argmax(-1)).mean() >= 0.9  # greedy next tokens agree almost everywhere


def test_a_seed_gives_the_same_text_alone_and_among_other_requests(engine, tokenizer):
    prompt = chat(tokenizer, "Write a short poem about the sea.")
    sampled = {"max_tokens": 24, "temperature": 1.0, "top_p": 0.95}
    alone = generate(engine, prompt, seed=1234, **sampled)
    others = [submit(engine, chat(tokenizer, f"Tell me about the number {i}."), seed=i, **sampled) for i in range(5)]
    crowded = generate(engine, prompt, seed=1234, **sampled)
    for done, _ in others:
        assert done.wait(120)
    assert crowded == alone, "a seeded request's text must not depend on the requests batched with it"
    assert {generate(engine, prompt, seed=seed, **sampled) for seed in (1, 2, 3)} != {alone}


def test_min_tokens_below_max_tokens_holds_back_the_end_of_sequence(engine, tokenizer):
    prompt = chat(tokenizer, "What is the capital of France?")
    done, updates = submit(engine, prompt, max_tokens=40, min_tokens=25, temperature=0.0)
    assert done.wait(120)
    assert updates[-1].num_output_tokens >= 25  # the greedy answer alone ends after 8 tokens


def test_cancellation_frees_the_pipelines_kv_blocks(engine, tokenizer):
    done, updates = submit(engine, chat(tokenizer, "Tell me a story."), cancel_after=2, max_tokens=400, min_tokens=400)
    assert done.wait(120)
    assert updates[-1].finish_reason == "cancelled"
    assert engine.num_active == 0
    for _ in range(100):  # the loop's next step releases the cancelled sequence
        if not engine.pipeline.has_non_finished_requests():
            break
        threading.Event().wait(0.02)
    assert not engine.pipeline.has_non_finished_requests()


def test_prefix_caching_when_asked_reuses_a_prompt_and_answers_the_same(openvino_checkpoint, tokenizer):
    from openvino_core import OpenVINOEngine

    core = OpenVINOEngine(str(openvino_checkpoint), max_num_seqs=2, max_model_len=512, prefix_caching=True)
    try:
        prompt = chat(tokenizer, "What is the capital of France?")
        first = generate(core, prompt, max_tokens=12, temperature=0.0)
        assert "Paris" in first and generate(core, prompt, max_tokens=12, temperature=0.0) == first
    finally:
        core.shutdown()


def test_the_fast_core_refuses_prefix_caching(checkpoint_dir):
    from fast_core import FastEngine

    with pytest.raises(ValueError, match="no prefix cache"):
        FastEngine(str(checkpoint_dir), max_num_seqs=1, max_model_len=64, prefix_caching=True)


def test_the_export_is_reused_while_it_matches_and_redone_when_a_file_changes(
    checkpoint_dir, home, openvino_checkpoint, tmp_path
):
    assert ensure_openvino_ir(checkpoint_dir, home) == openvino_checkpoint  # cached: no second export
    record = json.loads((openvino_checkpoint / EXPORT_RECORD).read_text())
    assert record["weight_format"] == "int8" and record["top1_agreement"] >= 0.9
    copy = tmp_path / "export"
    shutil.copytree(openvino_checkpoint, copy)
    fingerprint = record["source"]["fingerprint"]
    assert _is_current(copy, fingerprint)
    assert not _is_current(copy, "another checkpoint")
    with (copy / "openvino_model.bin").open("ab") as weights:
        weights.write(b"\0")  # a truncated or altered file no longer verifies
    assert not _is_current(copy, fingerprint)


def test_an_unknown_weight_format_names_the_choices(checkpoint_dir, home):
    with pytest.raises(ExportError, match="int8, int4, fp16"):
        ensure_openvino_ir(checkpoint_dir, home, "int3")
