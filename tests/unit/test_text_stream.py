"""Incremental detokenization with the real SmolLM2 tokenizer: no split characters, stop strings trimmed."""

import pytest


@pytest.fixture(params=["transformers", "rust"])
def stream_of(tokenizer, request):
    """Every test runs with the transformers tokenizer and with the Rust one the engines use (fast_decoder)."""
    from text_stream import TextStream, fast_decoder

    decoder = tokenizer
    if request.param == "rust":
        decoder = fast_decoder(tokenizer)
        assert decoder is tokenizer.backend_tokenizer, "SmolLM2's tokenizer should take the Rust decoding path"

    def make(stop=()):
        return TextStream(decoder, stop)

    return make


def feed_one_by_one(stream, ids):
    pieces = [stream.push([i]) for i in ids]
    pieces.append(stream.finish())
    return pieces


@pytest.mark.parametrize("text", ["Paris is nice.", "héllo wörld", "日本語のテキスト", "emoji 🎉👍🏽 end", "a\n\n  b"])
def test_streamed_pieces_join_to_the_decoded_text(stream_of, tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = feed_one_by_one(stream_of(), ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces), pieces


def test_multibyte_character_is_never_split(stream_of, tokenizer):
    ids = tokenizer("🎉", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1, "the test needs an emoji the tokenizer splits into byte tokens"
    stream = stream_of()
    assert [stream.push([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert stream.push([ids[-1]]) == "🎉"


def test_stop_string_spanning_tokens_is_trimmed(stream_of, tokenizer):
    ids = tokenizer("The answer is Paris. Then more text", add_special_tokens=False)["input_ids"]
    stream = stream_of(stop=["Paris."])
    pieces = feed_one_by_one(stream, ids)
    assert "".join(pieces) == "The answer is "
    assert stream.stopped


def test_text_that_only_looks_like_a_stop_prefix_is_released(stream_of, tokenizer):
    ids = tokenizer("Par is not Paris", add_special_tokens=False)["input_ids"]
    stream = stream_of(stop=["Paris!"])
    pieces = feed_one_by_one(stream, ids)
    assert "".join(pieces) == "Par is not Paris"
    assert not stream.stopped


def test_earliest_of_several_stop_strings_wins(stream_of, tokenizer):
    ids = tokenizer("one two three four", add_special_tokens=False)["input_ids"]
    pieces = feed_one_by_one(stream_of(stop=["four", "two"]), ids)
    assert "".join(pieces) == "one "


@pytest.mark.parametrize("stop", [(), ("the", "!\n", "ä")])
def test_plain_token_fast_path_streams_what_the_windowed_decode_does(tokenizer, stop):
    """TextStream's fast path (plain tokens of a ByteLevel tokenizer appended as they are) against the same stream
    with the fast path off, on random tokens: text, multi-byte fragments, special tokens, and ends (finish)."""
    import random

    from text_stream import TextStream, fast_decoder, plain_pieces

    decoder = fast_decoder(tokenizer)
    assert plain_pieces(decoder) is not None, "SmolLM2's Rust tokenizer should have plain pieces"
    assert plain_pieces(tokenizer) is None  # the transformers wrapper: always the windowed decode
    text_ids = tokenizer("Hello, the wörld! 日本語 🎉 and\n\n  the end ä", add_special_tokens=False)["input_ids"]
    rng = random.Random(16)
    fast_hits = 0
    for _ in range(60):
        fast, slow = TextStream(decoder, stop), TextStream(decoder, stop)
        slow._pieces = None
        for _ in range(rng.randint(1, 40)):
            pick = rng.random()  # mostly text, some arbitrary ids (byte fragments), some special tokens
            token = rng.choice(text_ids) if pick < 0.7 else rng.randrange(17) if pick < 0.8 else rng.randrange(49152)
            fast_hits += fast._read_offset == len(fast._tokens) and bool(fast._pieces.get(token))
            assert fast.push([token]) == slow.push([token])
            assert (fast.stopped, fast._prefix_offset, fast._read_offset) == (
                slow.stopped,
                slow._prefix_offset,
                slow._read_offset,
            )
        assert fast.finish() == slow.finish()
        assert fast.full_text() == slow.full_text()
    assert fast_hits > 100  # the fast path was taken (most tokens)
