"""Bad words (engine_contract's bad_words) as token ids, for both of our samplers (sampler.py on torch,
numpy_sampler.py for the OpenVINO core): no torch import here, so the OpenVINO core's process stays small."""

from __future__ import annotations

from collections.abc import Callable

from core import InvalidRequest

BAD_WORD_TOKENS = 8  # the longest multi-token bad word (tokens) a request may ban
BAD_WORD_SEQUENCES = 16  # and how many token sequences of them


def split_bad_words(
    bad_words: tuple[str, ...], encode: Callable[[str], list[int]]
) -> tuple[set[int], tuple[tuple[int, ...], ...]]:
    """(single-token ids to ban, multi-token sequences to ban by prefix match) of bad words, each as written and
    after a space (as vLLM bans them); `encode` tokenizes without special tokens."""
    single, multi = set(), []
    for word in bad_words:
        for variant in dict.fromkeys((word, " " + word.lstrip(" "))):
            ids = tuple(encode(variant))
            if len(ids) == 1:
                single.add(ids[0])
            elif len(ids) > BAD_WORD_TOKENS:
                raise InvalidRequest(f"bad_words: {variant!r} is {len(ids)} tokens, more than {BAD_WORD_TOKENS}")
            elif ids and ids not in multi:
                multi.append(ids)
    if len(multi) > BAD_WORD_SEQUENCES:
        raise InvalidRequest(f"bad_words: more than {BAD_WORD_SEQUENCES} multi-token words (with their spaced forms)")
    return single, tuple(multi)
