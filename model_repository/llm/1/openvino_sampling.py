"""core.Sampling -> openvino_genai.GenerationConfig for the OpenVINO engine core: what GenAI 2026.4 honours per
request, with its semantics where they are not the contract's (checked in tests/unit/test_openvino_core.py).

- temperature / top_p / top_k, seed: GenAI's multinomial sampler, a std::mt19937 per GenAI request seeded with
  `rng_seed`. mt19937 keeps only the low 32 bits of the seed, so we fold a 64-bit seed into 32 (seeds below 2**32
  are used as they are). An unseeded request draws its seed (GenAI's default is 0 for every request).
- repetition_penalty: HF's (divide a positive logit, multiply a negative one) over the set of prompt and generated
  tokens, like HF and vLLM.
- presence_penalty / frequency_penalty: over generated tokens only, once per distinct token / per occurrence, like
  OpenAI and vLLM; but each of GenAI's two transforms (presence, then frequency) moves a logit TOWARDS ZERO: it
  subtracts from a logit >= 0 and ADDS to a negative one, where OpenAI and vLLM always subtract. They agree on
  every generated token whose logit stays >= 0; one whose logit is (or becomes, after the presence penalty)
  negative is raised instead of lowered, by up to 2 x (presence + frequency x its count). SmolLM2's negative
  logits are far below its top ones (~12-25), so the sampled distribution moves little: total variation at
  temperature 1 over sampled 64-token answers, per step, mean <= 3.5e-5 and worst 1.3e-2 with penalties <= 1,
  mean 3.7e-4 and worst 6.9e-2 with both at 2 (tests/unit/test_openvino_core.py checks the bound at <= 1.5).
- min_tokens: GenAI masks every stop token id (the model's end-of-sequence and the request's stop_token_ids) for
  the first min_new_tokens tokens, like vLLM.
- stop_token_ids: added to the end-of-sequence ids; the token ends the sequence and is not part of the text (it is
  in the update's token_ids and counted in num_output_tokens, as GenAI generated it).
- n: n GenAI requests of one sequence each (not GenAI's num_return_sequences: with more than one sequence in a
  group GenAI streams nothing until every sequence has finished (SequenceGroup::notify_handle), and its penalty
  counts and min_new_tokens are kept per group, pooled over the n sequences). Sequence i > 0 gets its own seed
  derived from the request's. The price: the prompt is prefilled n times (GenAI's group prefills once and forks
  the sequences' KV block tables, BlockManager::fork_sequence; prefix caching is off). Measured, n = 4 x 64 tokens
  on 2 busy cores: CPU +9 % with a 30-token prompt, +48 % with 300; first text after 0.5 s / 1.6 s instead of
  4.0 s / 6.2 s (the group's only output, at its end).
- logprobs: GenAI's `logprobs = 1`: the log-softmax of the model's RAW logits at the sampled token (before the
  penalties, min_tokens' mask, temperature and top-k/top-p; vLLM's default "raw_logprobs" too).
- prompt_logprobs: GenAI's `echo`: the log-softmax of the raw logits at each prompt token after the first, from
  the prefill (the whole prompt's logits are computed). Not with prefix caching (cached tokens are not recomputed).
Not available in GenAI 2026.4, so left out of `honoured_by` (contract_io refuses them by name): top_logprobs
(GenerationConfig.logprobs "> 1 is treated as 1"), logit_bias and bad_words (no GenerationConfig field, and the
sampler's LogitProcessor is built only from GenerationConfig: no per-request logits hook from Python).
"""

from __future__ import annotations

import secrets

import openvino_genai as ov_genai

import engine_contract

from core import InvalidRequest, Sampling

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B97F4A7C15


def sequence_seeds(seed: int | None, n: int) -> list[int]:
    """The rng_seed of each of the request's n sequences: the request's seed folded to 32 bits for the first,
    well-mixed derivations for the others (so that sequence 1 of seed s is not sequence 0 of seed s + 1)."""
    if seed is None:
        seed = secrets.randbits(64)
    base = seed & 0xFFFFFFFFFFFFFFFF
    seeds = [(base ^ (base >> 32)) & _MASK32]
    for i in range(1, n):
        seeds.append(_splitmix64((base + i * _GOLDEN) & 0xFFFFFFFFFFFFFFFF) & _MASK32)
    return seeds


def _splitmix64(x: int) -> int:
    x = (x + _GOLDEN) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def check_sampling(sampling: Sampling, vocab_size: int, prefix_caching: bool) -> None:
    """Refuse what GenAI would assert on (an assertion inside step() would fail every request in flight)."""
    if not 1 <= sampling.n <= engine_contract.MAX_RETURN_SEQUENCES:
        raise InvalidRequest(f"num_return_sequences must be in [1, {engine_contract.MAX_RETURN_SEQUENCES}]")
    for name in ("presence_penalty", "frequency_penalty"):
        if not -2.0 <= getattr(sampling, name) <= 2.0:
            raise InvalidRequest(f"{name} must be in [-2, 2]")
    if not sampling.repetition_penalty > 0:
        raise InvalidRequest("repetition_penalty must be > 0")
    if any(not 0 <= i < vocab_size for i in sampling.stop_token_ids):
        raise InvalidRequest(f"stop_token_ids must be token ids in [0, {vocab_size})")
    if sampling.prompt_logprobs and prefix_caching:
        raise InvalidRequest(
            "return_prompt_log_probs is not available with prefix caching (cached tokens are not recomputed)"
        )
    # What GenAI cannot do (contract_io refuses these already; a direct caller of the core is told too).
    if sampling.top_logprobs:
        raise InvalidRequest("num_top_log_probs is not supported by the llm engine core 'openvino'")
    if sampling.logit_bias:
        raise InvalidRequest("embedding_bias_token_ids is not supported by the llm engine core 'openvino'")
    if sampling.bad_words:
        raise InvalidRequest("bad_words is not supported by the llm engine core 'openvino'")
    # GenAI's StructuredOutputConfig would do it, but GenAI compiles the grammar inside step(), where an invalid one
    # fails every request in flight, and its bundled xgrammar is not ours: a check at submit could not vouch for it.
    if sampling.guide is not None:
        raise InvalidRequest("guided_decoding_guide_type is not supported by the llm engine core 'openvino'")


def generation_config(
    sampling: Sampling, stop_ids: frozenset[int], rng_seed: int, echo: bool
) -> ov_genai.GenerationConfig:
    """The GenerationConfig of one sequence. `stop_ids` are the ids that end it (empty: exactly max_tokens)."""
    config = ov_genai.GenerationConfig()
    config.max_new_tokens = sampling.max_tokens
    if stop_ids:
        config.stop_token_ids = set(stop_ids)
        config.min_new_tokens = sampling.min_tokens
    else:  # min_tokens >= max_tokens: exactly max_tokens tokens
        config.ignore_eos = True
    if not sampling.greedy:
        config.do_sample = True
        config.temperature = sampling.temperature
        config.top_p = sampling.top_p
        if sampling.top_k:
            config.top_k = sampling.top_k
        config.rng_seed = rng_seed
    config.repetition_penalty = sampling.repetition_penalty
    config.presence_penalty = sampling.presence_penalty
    config.frequency_penalty = sampling.frequency_penalty
    if sampling.logprobs:
        config.logprobs = 1
    config.echo = echo
    try:
        config.validate()
    except RuntimeError as exc:  # our checks should have caught it; say what GenAI says
        raise InvalidRequest(f"the openvino engine core cannot honour this request: {exc}") from exc
    return config
