"""Paged KV cache bookkeeping on the host: which fixed-size blocks of the device cache each sequence owns, and a
prefix cache of full blocks that sequences with identical token prefixes share.

Why: a fixed slot per sequence (fast_runner.SlotRunner) reserves max_model_len tokens for every sequence, caps
concurrency at the slot count and shares nothing. Here a sequence holds ceil(tokens / block_size) blocks, taken
as it grows; a block is a row of the runner's cache tensor, so a block table (list of block ids) is all the device
needs to find a sequence's K/V.

Prefix caching:
- a FULL block is identified by a hash of its tokens chained with the previous block's hash, so equal content
  after a different prefix is a different block (its K/V differ: they depend on every earlier token);
- a block is registered only once its K/V have been written (`cache_full_blocks`, after the step ran);
- blocks carry reference counts; a registered block whose count drops to 0 stays cached but evictable, in LRU
  order; a new allocation takes never-registered free blocks first, then evicts the least recently freed cached
  block;
- only full blocks are shared and a sequence's next write always lands past its cached prefix (admission never
  reuses a prompt's last token's block, see `allocate`), so a shared block is never written again:
  copy-on-write is never needed.
Hash collisions cannot alias: a lookup also compares the block's tokens and parent hash; a collision is a miss.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

SeqId = Hashable


@dataclass
class _Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None  # set while registered in the prefix cache
    parent_hash: int | None = None  # with `tokens`: what the hash stands for (checked on lookup)
    tokens: tuple[int, ...] = ()


@dataclass
class _Table:
    blocks: list[int] = field(default_factory=list)
    num_tokens: int = 0  # tokens the blocks have room reserved for (written or about to be in this step)
    hashes: list[int] = field(default_factory=list)  # chained hashes of its leading full blocks, registered or not


def chain_hash(parent_hash: int | None, tokens: Sequence[int]) -> int:
    """The identity of a full block: its tokens and everything before them (through the parent's hash)."""
    return hash((parent_hash, tuple(tokens)))


class OutOfBlocks(RuntimeError):
    """An allocation asked for more blocks than are free (the scheduler checks `can_append` first)."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [_Block(i) for i in range(num_blocks)]
        self._free: list[int] = list(
            range(num_blocks - 1, -1, -1)
        )  # never registered, ref 0; pop() takes block 0 first
        self._evictable: OrderedDict[int, None] = OrderedDict()  # registered, ref 0; first = least recently freed
        self._cached: dict[int, int] = {}  # block hash -> block id
        self._tables: dict[SeqId, _Table] = {}
        self.stats = {"lookup_tokens": 0, "hit_tokens": 0, "evictions": 0}

    # ------------------------------------------------------------------ queries for the scheduler
    @property
    def num_free(self) -> int:
        """Blocks an allocation can take now (free plus evictable cached ones)."""
        return len(self._free) + len(self._evictable)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_table(self, seq_id: SeqId) -> list[int]:
        return self._tables[seq_id].blocks

    def has(self, seq_id: SeqId) -> bool:
        return seq_id in self._tables

    def ref_count(self, block_id: int) -> int:
        return self._blocks[block_id].ref_count

    def is_cached(self, block_id: int) -> bool:
        return self._blocks[block_id].block_hash is not None

    def can_append(self, seq_id: SeqId, num_new_tokens: int) -> bool:
        """Whether the sequence can grow by `num_new_tokens` tokens with the blocks free now."""
        return self._blocks_to_grow(seq_id, num_new_tokens) <= self.num_free

    def append_room(self, seq_id: SeqId) -> int:
        """How many more tokens the sequence can take with the blocks free now (its last block's room included)."""
        table = self._tables[seq_id]
        return (len(table.blocks) + self.num_free) * self.block_size - table.num_tokens

    def num_tokens(self, seq_id: SeqId) -> int:
        """Tokens the sequence's blocks hold or have room reserved for."""
        return self._tables[seq_id].num_tokens

    # ------------------------------------------------------------------ admission (prefix cache lookup)
    def match_prefix(self, token_ids: Sequence[int]) -> list[int]:
        """The cached blocks that hold the longest prefix of `token_ids` made of full blocks, at most up to
        the second-to-last token: the last token must run through the model for its logits. Takes no reference."""
        if not self.enable_prefix_caching:
            return []
        hits, parent = [], None
        for index in range((len(token_ids) - 1) // self.block_size):
            tokens = tuple(token_ids[index * self.block_size : (index + 1) * self.block_size])
            block_hash = chain_hash(parent, tokens)
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            block = self._blocks[block_id]
            if block.tokens != tokens or block.parent_hash != parent:  # a hash collision: a miss, not an alias
                break
            hits.append(block_id)
            parent = block_hash
        return hits

    def allocate(
        self, seq_id: SeqId, token_ids: Sequence[int], num_new_tokens: int, use_cache: bool = True
    ) -> int | None:
        """Admit a sequence: share its cached prefix blocks and allocate blocks for the first `num_new_tokens`
        tokens after them. Returns how many tokens are already cached (their K/V need not be computed), or None
        (and changes nothing) when the blocks do not fit. `num_new_tokens` is capped at what remains. With
        `use_cache` False nothing is looked up (a sequence that must compute every token: prompt log-probs)."""
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id!r} already holds blocks")
        hits = self.match_prefix(token_ids) if use_cache else []
        num_cached = len(hits) * self.block_size
        num_new_tokens = min(num_new_tokens, len(token_ids) - num_cached)
        needed = self.blocks_for(num_cached + num_new_tokens) - len(hits)
        reviving = sum(1 for b in hits if self._blocks[b].ref_count == 0)  # evictable now, no longer once shared
        if needed > self.num_free - reviving:
            return None
        table = _Table()
        for block_id in hits:
            self._take(block_id)
            block_hash = self._blocks[block_id].block_hash
            assert block_hash is not None  # a hit is registered
            table.blocks.append(block_id)
            table.hashes.append(block_hash)
        table.blocks.extend(self._pop_free() for _ in range(needed))
        table.num_tokens = num_cached + num_new_tokens
        self._tables[seq_id] = table
        self.stats["lookup_tokens"] += len(token_ids)
        self.stats["hit_tokens"] += num_cached
        return num_cached

    # ------------------------------------------------------------------ growth, registration, release
    def append_slots(self, seq_id: SeqId, num_new_tokens: int) -> list[int]:
        """Reserve room for `num_new_tokens` more tokens (allocating blocks on demand); the block table."""
        needed = self._blocks_to_grow(seq_id, num_new_tokens)
        if needed > self.num_free:
            raise OutOfBlocks(f"{needed} blocks needed, {self.num_free} free")
        table = self._tables[seq_id]
        table.blocks.extend(self._pop_free() for _ in range(needed))
        table.num_tokens += num_new_tokens
        return table.blocks

    def append_slot(self, seq_id: SeqId) -> list[int] | None:
        """`append_slots(seq_id, 1)` for a decode step, or None (nothing changed) when its token needs a new block
        and none is free (`can_append` and `append_slots` in one, without their arithmetic)."""
        table = self._tables[seq_id]
        if table.num_tokens >= len(table.blocks) * self.block_size:
            if not self._free and not self._evictable:
                return None
            table.blocks.append(self._pop_free())
        table.num_tokens += 1
        return table.blocks

    def cache_full_blocks(self, seq_id: SeqId, token_ids: Sequence[int], num_computed: int) -> None:
        """Register the sequence's blocks that are full now that the K/V of its first `num_computed` tokens are
        written. A block whose content is already cached elsewhere (two equal prompts prefilled side by side)
        stays private: the first copy keeps the cache entry."""
        table = self._tables[seq_id]
        while len(table.hashes) < min(num_computed // self.block_size, len(table.blocks)):
            index = len(table.hashes)
            tokens = tuple(token_ids[index * self.block_size : (index + 1) * self.block_size])
            parent = table.hashes[-1] if table.hashes else None
            block_hash = chain_hash(parent, tokens)
            table.hashes.append(block_hash)
            block = self._blocks[table.blocks[index]]
            if self.enable_prefix_caching and block_hash not in self._cached and block.block_hash is None:
                block.block_hash, block.parent_hash, block.tokens = block_hash, parent, tokens
                self._cached[block_hash] = block.block_id

    def free(self, seq_id: SeqId) -> None:
        """Release a finished or preempted sequence's blocks. Last blocks first, so that among one sequence's
        cached blocks the tail (the least likely to be shared) is evicted first."""
        table = self._tables.pop(seq_id)
        for block_id in reversed(table.blocks):
            block = self._blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.block_hash is not None:
                    self._evictable[block_id] = None  # most recently freed: evicted last
                else:
                    self._free.append(block_id)

    def reset_prefix_cache(self) -> None:
        """Forget every cached block nobody holds (e.g. after a weight reload)."""
        for block_id in list(self._evictable):
            self._uncache(self._blocks[block_id])
            self._free.append(block_id)
        self._evictable.clear()

    # ------------------------------------------------------------------ internals
    def _blocks_to_grow(self, seq_id: SeqId, num_new_tokens: int) -> int:
        table = self._tables[seq_id]
        return max(self.blocks_for(table.num_tokens + num_new_tokens) - len(table.blocks), 0)

    def _take(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.ref_count == 0:
            self._evictable.pop(block_id)
        block.ref_count += 1

    def _pop_free(self) -> int:
        if self._free:
            block_id = self._free.pop()
        elif self._evictable:
            block_id, _ = self._evictable.popitem(last=False)  # least recently freed
            self._uncache(self._blocks[block_id])
            self.stats["evictions"] += 1
        else:
            raise OutOfBlocks("no free block")
        self._blocks[block_id].ref_count = 1
        return block_id

    def _uncache(self, block: _Block) -> None:
        if block.block_hash is not None and self._cached.get(block.block_hash) == block.block_id:
            del self._cached[block.block_hash]
        block.block_hash, block.parent_hash, block.tokens = None, None, ()
