"""The default CPU engine core (openvino_core.py) with the real SmolLM2 exported to int8 OpenVINO IR, against the
fp32 Hugging Face checkpoint it came from: quality kept, per-request seeds, min_tokens, cancellation, the export's
cache, and every sampling feature GenAI honours per request (penalties, stop_token_ids, n, log-probabilities,
prompt log-probabilities, token-id prompts) with its semantics. (What every core shares is in test_engine_cores.py.)"""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import openvino_genai as ov_genai
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


# ---------------------------------------------------------------------------------------------------- sampling
# Per request, every sampling feature GenAI has (openvino_sampling.py maps them), checked against the fp32 HF
# checkpoint: the int8 engine's greedy choices are teacher-forced through it, with the reference semantics applied.
#
# At temperature 0 the engine's token is the int8 model's argmax of its processed logits; under the fp32 model
# with the reference processing it must be within LOGIT_MARGIN of the argmax (measured: at most 0.5).
LOGIT_MARGIN = 1.0
# |engine's log-probability - fp32 log_softmax| of a greedy token. The int8 weights are not the main error: OpenVINO's
# CPU plugin computes in bf16 (INFERENCE_PRECISION_HINT, on CPUs with BF16), and the pipeline's paged attention
# differs from the plain IR as much as from fp32. Measured over 4 prompts x 32 tokens: at most 0.37, mean 0.03-0.09.
LOGPROB_TOLERANCE = 0.5
LOGPROB_MEAN_TOLERANCE = 0.12


def sequences(engine, prompt, **sampling) -> dict[int, list]:
    """Run one request to its end; its updates by sequence index."""
    done, updates = submit(engine, prompt, **sampling)
    n = sampling.get("n", 1)
    for _ in range(1200):
        if sum(1 for u in updates if u.finish_reason) == n:
            break
        done.wait(0.1)
    by_index: dict[int, list] = {}
    for update in updates:
        by_index.setdefault(update.index, []).append(update)
    assert sorted(by_index) == list(range(n))
    for index, seq in by_index.items():
        assert [u.finish_reason is not None for u in seq] == [False] * (len(seq) - 1) + [True], index
        assert seq[-1].finish_reason in ("stop", "length"), seq[-1]
    return by_index


def tokens_of(updates) -> list[int]:
    return [t for u in updates for t in u.token_ids]


def text_of(updates) -> str:
    return "".join(u.text for u in updates)


def chat_ids(tokenizer, question: str) -> tuple[int, ...]:
    return tuple(tokenizer(chat(tokenizer, question))["input_ids"])


def fp32_logits(reference, ids) -> torch.Tensor:
    with torch.no_grad():
        return reference(torch.tensor([list(ids)])).logits[0].float()


def teacher_forced(reference, prompt, generated) -> torch.Tensor:
    """The fp32 logits that chose each generated token: [len(generated), vocab]."""
    logits = fp32_logits(reference, list(prompt) + list(generated))
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(generated)]


def openai_penalties(logits, generated, presence, frequency) -> torch.Tensor:
    """OpenAI's (and vLLM's) presence / frequency penalties: over the generated tokens, always subtracted."""
    out = logits.clone()
    for step in range(len(generated)):
        counts = torch.bincount(torch.tensor(generated[:step], dtype=torch.long), minlength=logits.shape[-1])
        out[step] -= presence * (counts > 0).float() + frequency * counts.float()
    return out


def genai_penalties(logits, generated, presence, frequency) -> torch.Tensor:
    """GenAI's (logit_transformers.hpp): the same amounts, presence then frequency, each moving a logit towards
    zero (subtracted from a logit >= 0, added to a negative one)."""
    out = logits.clone()
    for step in range(len(generated)):
        counts = torch.bincount(torch.tensor(generated[:step], dtype=torch.long), minlength=logits.shape[-1])
        for amount in (presence * (counts > 0).float(), frequency * counts.float()):
            out[step] -= torch.where(out[step] >= 0, amount, -amount)
    return out


def hf_repetition_penalty(logits, prompt, generated, penalty) -> torch.Tensor:
    from transformers import RepetitionPenaltyLogitsProcessor

    processor = RepetitionPenaltyLogitsProcessor(penalty)
    rows = [
        processor(torch.tensor([list(prompt) + list(generated[:step])]), logits[step : step + 1].clone())[0]
        for step in range(len(generated))
    ]
    return torch.stack(rows)


def margins(processed, generated) -> torch.Tensor:
    """How far below the processed argmax each generated token is (0: it is the argmax)."""
    chosen = processed[torch.arange(len(generated)), torch.tensor(generated)]
    return processed.max(-1).values - chosen


def assert_greedy_under(processed, generated):
    worst = margins(processed, generated).max().item()
    assert worst <= LOGIT_MARGIN, f"a greedy token is {worst:.2f} below the reference's argmax"


# A plain-text prompt whose greedy continuation repeats itself, so that every penalty changes it.
REPEATING = "The farmer grows apples. The apples are red. The apples"


def test_repetition_penalty_is_hfs_over_prompt_and_generated_tokens(engine, reference, tokenizer):
    prompt = tuple(tokenizer(REPEATING)["input_ids"])
    plain = tokens_of(sequences(engine, prompt, max_tokens=24, temperature=0.0)[0])
    penalised = tokens_of(sequences(engine, prompt, max_tokens=24, temperature=0.0, repetition_penalty=1.3)[0])
    assert penalised != plain
    logits = teacher_forced(reference, prompt, penalised)
    assert_greedy_under(hf_repetition_penalty(logits, prompt, penalised, 1.3), penalised)
    # The prompt's tokens count too: a penalty over the generated tokens alone does not explain the choices.
    generated_only = hf_repetition_penalty(teacher_forced(reference, prompt, penalised), [], penalised, 1.3)
    assert margins(generated_only, penalised).max() > LOGIT_MARGIN


@pytest.mark.parametrize("presence, frequency", [(1.5, 0.0), (0.0, 1.2), (-1.0, 0.0)])
def test_presence_and_frequency_penalties_are_openais_over_generated_tokens(
    engine, reference, tokenizer, presence, frequency
):
    prompt = tuple(tokenizer(REPEATING)["input_ids"])
    plain = tokens_of(sequences(engine, prompt, max_tokens=40, temperature=0.0)[0])
    penalised = tokens_of(
        sequences(
            engine, prompt, max_tokens=40, temperature=0.0, presence_penalty=presence, frequency_penalty=frequency
        )[0]
    )
    assert penalised != plain
    logits = teacher_forced(reference, prompt, penalised)
    assert_greedy_under(openai_penalties(logits, penalised, presence, frequency), penalised)
    # GenAI moves a negative logit up rather than down. SmolLM2's negative logits are far below its top ones, so at
    # temperature 1 the distributions differ little (total variation; measured over 8 sampled 64-token answers
    # with penalties <= 1: mean <= 3.5e-5 per step, worst step 1.3e-2; with both at 2: mean 3.7e-4, worst 6.9e-2).
    openai = torch.softmax(openai_penalties(logits, penalised, presence, frequency), -1)
    genai = torch.softmax(genai_penalties(logits, penalised, presence, frequency), -1)
    variation = (openai - genai).abs().sum(-1) / 2
    assert variation.mean() < 1e-4 and variation.max() < 2e-2, variation


def test_logprobs_are_the_raw_log_softmax_of_the_fp32_checkpoint_within_int8s_tolerance(engine, reference, tokenizer):
    prompt = chat_ids(tokenizer, "Tell me about the moon.")
    for penalty in (1.0, 1.3):  # the penalty changes the choice, not the reported (raw) log-probability
        seq = sequences(engine, prompt, max_tokens=24, temperature=0.0, logprobs=True, repetition_penalty=penalty)[0]
        generated, logprobs = tokens_of(seq), [lp for u in seq for lp in u.logprobs]
        assert len(logprobs) == len(generated) == seq[-1].num_output_tokens
        expected = torch.log_softmax(teacher_forced(reference, prompt, generated), -1)
        expected = expected[torch.arange(len(generated)), torch.tensor(generated)]
        error = (torch.tensor(logprobs) - expected).abs()
        assert error.max() <= LOGPROB_TOLERANCE and error.mean() <= LOGPROB_MEAN_TOLERANCE, (penalty, error)
        if penalty != 1.0:  # not the log-probability of the penalised distribution the token was drawn from
            processed = hf_repetition_penalty(teacher_forced(reference, prompt, generated), prompt, generated, penalty)
            processed = torch.log_softmax(processed, -1)[torch.arange(len(generated)), torch.tensor(generated)]
            assert (torch.tensor(logprobs) - processed).abs().mean() > 5 * error.mean()
    assert all(not u.logprobs for u in sequences(engine, prompt, max_tokens=4, temperature=0.0)[0])


def test_prompt_logprobs_are_the_fp32_checkpoints_within_int8s_tolerance(engine, reference, tokenizer):
    prompt = tuple(tokenizer(" ".join([TEXT] * 5))["input_ids"])
    assert len(prompt) > ov_genai.SchedulerConfig().max_num_batched_tokens  # prefilled in chunks
    seq = sequences(engine, prompt, max_tokens=3, temperature=0.0, prompt_logprobs=True)[0]
    assert seq[0].prompt_logprobs is not None and all(u.prompt_logprobs is None for u in seq[1:])
    assert len(tokens_of(seq)) == seq[-1].num_output_tokens  # the echoed prompt is not among the tokens
    expected = torch.log_softmax(fp32_logits(reference, prompt)[:-1], -1)
    expected = expected[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
    error = (torch.tensor(seq[0].prompt_logprobs) - expected).abs()
    assert len(seq[0].prompt_logprobs) == len(prompt) - 1
    assert error.max() <= LOGPROB_TOLERANCE and error.mean() <= LOGPROB_MEAN_TOLERANCE, error


def test_stop_token_ids_end_the_text_without_the_token_and_keep_the_eos(engine, tokenizer):
    prompt = chat_ids(tokenizer, "What is the capital of France?")
    plain = sequences(engine, prompt, max_tokens=24, temperature=0.0)[0]
    generated = tokens_of(plain)
    assert plain[-1].finish_reason == "stop" and generated[-1] == tokenizer.eos_token_id  # the model's own end
    stop_id = generated[4]
    first = generated.index(stop_id)
    stopped = sequences(engine, prompt, max_tokens=24, temperature=0.0, stop_token_ids=(stop_id,))[0]
    assert stopped[-1].finish_reason == "stop"
    assert tokens_of(stopped) == generated[: first + 1]  # the stop token is reported among the ids ...
    assert text_of(stopped) == tokenizer.decode(generated[:first], skip_special_tokens=True)  # not in the text
    # Another stop id that never comes: the model's end of sequence still ends it.
    unused = sequences(engine, prompt, max_tokens=24, temperature=0.0, stop_token_ids=(tokenizer.encode("zebra")[0],))
    assert tokens_of(unused[0]) == generated and text_of(unused[0]) == text_of(plain)


def test_min_tokens_holds_back_the_stop_token_ids_too(engine, tokenizer):
    prompt = chat_ids(tokenizer, "What is the capital of France?")
    generated = tokens_of(sequences(engine, prompt, max_tokens=24, temperature=0.0)[0])
    stop_id = generated[2]
    seq = sequences(engine, prompt, max_tokens=30, min_tokens=12, temperature=0.0, stop_token_ids=(stop_id,))[0]
    assert seq[-1].num_output_tokens >= 12 and stop_id not in tokens_of(seq)[:11]


def test_n_sequences_are_streamed_each_with_its_index_and_differ(engine, tokenizer):
    prompt = chat(tokenizer, "Write a short poem about the sea.")
    sampled = {"max_tokens": 16, "temperature": 1.0, "n": 4}
    by_index = sequences(engine, prompt, seed=7, **sampled)
    texts = [text_of(by_index[i]) for i in range(4)]
    assert len(set(texts)) > 1
    assert all(len(by_index[i]) > 2 for i in range(4)), "every sequence is streamed, not sent at its end"
    assert all(by_index[i][-1].num_output_tokens == len(tokens_of(by_index[i])) for i in range(4))
    again = sequences(engine, prompt, seed=7, **sampled)
    assert [text_of(again[i]) for i in range(4)] == texts  # seeded: reproducible, sequence by sequence
    alone = sequences(engine, prompt, seed=7, max_tokens=16, temperature=1.0)
    assert text_of(alone[0]) == texts[0]  # sequence 0 is what the seed gives with n = 1


def test_unseeded_requests_draw_their_own_seeds(engine, tokenizer):
    prompt = chat(tokenizer, "Write a short poem about the sea.")
    assert len({generate(engine, prompt, max_tokens=16, temperature=1.0) for _ in range(3)}) > 1


def test_a_token_id_prompt_answers_as_its_text(engine, tokenizer):
    prompt = chat(tokenizer, "What is the capital of France?")
    by_text = sequences(engine, prompt, max_tokens=16, temperature=0.0)[0]
    by_ids = sequences(engine, chat_ids(tokenizer, "What is the capital of France?"), max_tokens=16, temperature=0.0)
    assert text_of(by_ids[0]) == text_of(by_text) and "Paris" in text_of(by_text)
    assert by_ids[0][-1].num_input_tokens == by_text[-1].num_input_tokens


@pytest.mark.parametrize(
    "sampling, named",
    [
        ({"top_logprobs": 2, "logprobs": True}, "num_top_log_probs"),
        ({"logit_bias": ((5, 1.0),)}, "embedding_bias"),
        ({"bad_words": ("sea",)}, "bad_words"),
        ({"stop_token_ids": (10**6,)}, "stop_token_ids"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"n": 17}, "num_return_sequences"),
    ],
)
def test_what_genai_cannot_do_is_refused_by_name(engine, sampling, named):
    from core import InvalidRequest

    with pytest.raises(InvalidRequest, match=named):
        submit(engine, "Hello", max_tokens=4, **sampling)
    with pytest.raises(InvalidRequest, match="input_ids"):
        submit(engine, (1, 2, 10**6), max_tokens=4)
    assert engine.num_active == 0


def test_the_contract_lists_what_the_openvino_core_honours():
    import engine_contract as contract

    refused = {spec.name for spec in contract.not_honoured(contract.OPENVINO)}
    assert {"num_top_log_probs", "embedding_bias_token_ids", "embedding_bias_weights", "bad_words"} <= refused
    for spec in (
        contract.PRESENCE_PENALTY,
        contract.FREQUENCY_PENALTY,
        contract.REPETITION_PENALTY,
        contract.STOP_TOKEN_IDS,
        contract.NUM_RETURN_SEQUENCES,
        contract.RETURN_LOG_PROBS,
        contract.RETURN_PROMPT_LOG_PROBS,
        contract.INPUT_IDS,
        contract.SEED,
        contract.MIN_TOKENS,
    ):
        assert contract.OPENVINO in spec.honoured_by, spec.name


def test_cancelling_a_request_of_n_sequences_ends_each_of_them_and_frees_their_kv_blocks(engine, tokenizer):
    done, updates = submit(
        engine, chat(tokenizer, "Tell me a story."), cancel_after=3, max_tokens=400, min_tokens=400, n=3
    )
    for _ in range(1200):
        if sum(1 for u in updates if u.finish_reason) == 3:
            break
        done.wait(0.1)
    finals = [u for u in updates if u.finish_reason]
    assert sorted(u.index for u in finals) == [0, 1, 2] and {u.finish_reason for u in finals} == {"cancelled"}
    assert engine.num_active == 0
    for _ in range(100):
        if not engine.pipeline.has_non_finished_requests():
            break
        threading.Event().wait(0.02)
    assert not engine.pipeline.has_non_finished_requests()
