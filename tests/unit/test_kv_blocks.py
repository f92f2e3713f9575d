"""kv_blocks.BlockManager: paged allocation, prefix sharing by chained block hashes, ref counts, LRU eviction."""

from __future__ import annotations

import pytest

from kv_blocks import BlockManager, OutOfBlocks

BS = 4


def prefill(manager: BlockManager, seq_id, tokens: list[int]) -> int:
    """Admit `tokens` whole, as if one step computed them all; the number of tokens that were cached."""
    cached = manager.allocate(seq_id, tokens, len(tokens))
    assert cached is not None
    manager.cache_full_blocks(seq_id, tokens, len(tokens))
    return cached


def test_allocate_extend_and_free_return_every_block():
    manager = BlockManager(num_blocks=8, block_size=BS)
    assert manager.allocate("a", list(range(6)), 6) == 0
    assert len(manager.block_table("a")) == 2 and manager.num_free == 6
    assert manager.can_append("a", 2)  # fills the second block: no new block
    manager.append_slots("a", 2)
    assert len(manager.block_table("a")) == 2
    manager.append_slots("a", 1)  # the 9th token needs a third block
    assert len(manager.block_table("a")) == 3 and manager.num_tokens("a") == 9
    manager.free("a")
    assert manager.num_free == 8 and not manager.has("a")


def test_allocate_can_take_a_first_chunk_only():
    manager = BlockManager(num_blocks=8, block_size=BS)
    assert manager.allocate("a", list(range(20)), 5) == 0
    assert len(manager.block_table("a")) == 2 and manager.num_tokens("a") == 5


def test_identical_prefix_shares_full_blocks_with_ref_counts():
    manager = BlockManager(num_blocks=16, block_size=BS)
    prompt = list(range(100, 110))  # 2 full blocks + 2 tokens
    prefill(manager, "a", prompt)
    shared = manager.block_table("a")[:2]
    cached = manager.allocate("b", prompt[:8] + [7, 7, 7], 11)
    assert cached == 8
    assert manager.block_table("b")[:2] == shared
    assert manager.block_table("b")[2] != manager.block_table("a")[2]  # the partial block is private
    assert [manager.ref_count(b) for b in shared] == [2, 2]
    manager.free("a")
    assert [manager.ref_count(b) for b in shared] == [1, 1]
    assert manager.stats["hit_tokens"] == 8


def test_the_last_prompt_token_is_never_taken_from_the_cache():
    """Its logits are needed: a prompt that is entirely cached full blocks recomputes its last block."""
    manager = BlockManager(num_blocks=16, block_size=BS)
    prompt = list(range(8))
    prefill(manager, "a", prompt)
    assert manager.allocate("b", prompt, 8) == 4
    assert manager.block_table("b")[0] == manager.block_table("a")[0]
    assert manager.block_table("b")[1] != manager.block_table("a")[1]


def test_hash_chaining_same_block_after_a_different_prefix_is_not_shared():
    manager = BlockManager(num_blocks=16, block_size=BS)
    prefill(manager, "a", [1, 1, 1, 1, 5, 6, 7, 8, 0])
    assert manager.allocate("b", [2, 2, 2, 2, 5, 6, 7, 8, 0], 9) == 0  # second block equal, first not
    assert not set(manager.block_table("a")) & set(manager.block_table("b"))
    assert manager.match_prefix([1, 1, 1, 1, 5, 6, 7, 8, 0]) == manager.block_table("a")[:2]
    assert manager.match_prefix([5, 6, 7, 8, 0]) == []  # the block's tokens alone do not identify it


def test_freed_cached_blocks_stay_reusable_until_evicted():
    manager = BlockManager(num_blocks=4, block_size=BS)
    prompt = list(range(9))
    prefill(manager, "a", prompt)
    manager.free("a")
    assert manager.num_free == 4  # evictable blocks count as free
    assert manager.allocate("b", prompt, 9) == 8  # revived from the cache
    assert manager.num_free == 1


def test_eviction_takes_plain_free_blocks_first_then_least_recently_freed():
    manager = BlockManager(num_blocks=6, block_size=BS)
    prefill(manager, "old", [1] * 8 + [0])  # blocks: 2 cached full ones + 1 partial
    prefill(manager, "new", [2] * 8 + [0])
    old_blocks, new_blocks = manager.block_table("old")[:2], manager.block_table("new")[:2]
    manager.free("old")
    manager.free("new")
    # 2 plain free blocks (the partial ones) go first: nothing is evicted
    manager.allocate("x", [9] * 8, 8)
    assert manager.stats["evictions"] == 0
    assert manager.match_prefix([1] * 8 + [0]) == old_blocks
    # then the least recently freed: "old"'s blocks, the tail block first (free releases last blocks first)
    manager.allocate("y", [8] * 4, 4)
    assert manager.block_table("y") == [old_blocks[1]]
    assert manager.match_prefix([1] * 8 + [0]) == old_blocks[:1]
    assert manager.match_prefix([2] * 8 + [0]) == new_blocks
    assert manager.stats["evictions"] == 1


def test_reviving_a_cached_block_refreshes_its_place_in_the_lru():
    manager = BlockManager(num_blocks=3, block_size=BS)
    prefill(manager, "a", [1] * 4)  # one full block each, registered
    prefill(manager, "b", [2] * 4)
    manager.free("a")
    manager.free("b")  # LRU: a's block, then b's; one plain free block left
    assert manager.allocate("again", [1] * 4 + [0], 5) == 4  # a's block shared again
    manager.free("again")  # LRU now: b's, then a's
    manager.allocate("x", [3], 1)  # the plain free block first
    manager.allocate("y", [4], 1)  # then the least recently freed: b's
    assert manager.match_prefix([2] * 4 + [0]) == []
    assert manager.match_prefix([1] * 4 + [0]) != []


def test_exhaustion_refuses_without_changing_anything():
    manager = BlockManager(num_blocks=3, block_size=BS)
    assert manager.allocate("a", list(range(8)), 8) == 0
    free_before = manager.num_free
    assert manager.allocate("b", list(range(100, 108)), 8) is None
    assert manager.num_free == free_before and not manager.has("b")
    assert not manager.can_append("a", 5)  # 13 tokens need 4 blocks
    assert manager.can_append("a", 4)
    with pytest.raises(OutOfBlocks):
        manager.append_slots("a", 5)
    assert len(manager.block_table("a")) == 2


def test_a_failed_admission_does_not_count_its_own_hits_as_free():
    """Cached evictable blocks it would share are no longer free once shared."""
    manager = BlockManager(num_blocks=3, block_size=BS)
    prefill(manager, "a", [1] * 8 + [0])  # all 3 blocks, 2 of them cached
    manager.free("a")
    assert manager.allocate("b", [1] * 8 + list(range(10)), 10) is None  # 2 shared + 3 new > 3
    assert manager.num_free == 3
    assert manager.allocate("c", [1] * 8 + [0, 0], 10) == 8  # 2 shared + 1 new


def test_duplicate_content_prefilled_side_by_side_keeps_one_cache_entry():
    manager = BlockManager(num_blocks=8, block_size=BS)
    prompt = list(range(9))
    assert manager.allocate("a", prompt, 9) == 0
    assert manager.allocate("b", prompt, 9) == 0  # nothing registered yet: no sharing
    manager.cache_full_blocks("a", prompt, 9)
    manager.cache_full_blocks("b", prompt, 9)
    assert manager.match_prefix(prompt) == manager.block_table("a")[:2]
    manager.free("b")  # its private duplicates go back as plain free blocks
    assert manager.num_free == 8 - 3
    assert manager.match_prefix(prompt) == manager.block_table("a")[:2]


def test_generated_tokens_fill_blocks_that_become_cached():
    """Decode writes one token at a time; a block is registered once full, so a preempted sequence resumes
    from the cache."""
    manager = BlockManager(num_blocks=8, block_size=BS)
    tokens = [5, 6, 7]
    prefill(manager, "a", tokens)
    for token in (8, 9):
        manager.append_slots("a", 1)
        tokens.append(token)
        manager.cache_full_blocks("a", tokens, len(tokens))
    manager.free("a")
    assert manager.allocate("a", tokens + [10], 6) == 4


def test_prefix_caching_off_shares_nothing():
    manager = BlockManager(num_blocks=8, block_size=BS, enable_prefix_caching=False)
    prefill(manager, "a", list(range(9)))
    assert manager.allocate("b", list(range(9)), 9) == 0
    manager.free("a")
    manager.free("b")
    assert manager.num_free == 8 and manager.match_prefix(list(range(9))) == []
