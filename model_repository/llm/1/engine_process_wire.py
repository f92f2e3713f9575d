"""The messages between engine_process.py (in the Triton model's process) and engine_process_child.py (the engine
core's own process), over one socket pair, each a pickle (protocol 5) framed by multiprocessing's Connection.

Updates travel in batches, one message per flush of the child (about one per engine step under load), each
update as a plain tuple: pickling a list of 256 core.Update dataclasses costs ~9x more than the same tuples
(docs/PERFORMANCE.md, "The engine in its own process").
"""

from __future__ import annotations

import pickle
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported: the child reads this module before its import path has the engine's packages
    from core import Update

PROTOCOL = 5

# parent -> child. The first message is the start-up config: {"core", "options", "sys_path"}.
SUBMIT = "submit"  # (SUBMIT, key, request_id, prompt, sampling)
CANCEL = "cancel"  # (CANCEL, key)
STOP = "stop"  # (STOP,): end what is in flight ("error"), send what is left, then STOPPED, and exit
# child -> parent: a list is a batch of packed updates; anything else is a tuple named by its first item.
READY = "ready"  # (READY, {"max_model_len": int})
FAILED = "failed"  # (FAILED, "ExceptionType: message"): the core could not be loaded
STOPPED = "stopped"  # (STOPPED,)


def send(conn: Connection, message: object) -> None:
    conn.send_bytes(pickle.dumps(message, PROTOCOL))


def receive(conn: Connection) -> object:
    return pickle.loads(conn.recv_bytes())


def pack(key: int, done: bool, update: Update) -> tuple:
    """One update of request `key` (`done`: the request's last) as a tuple; the short form when it carries no
    log-probabilities (most updates)."""
    u = update
    head = (key, done, u.text, u.finish_reason, u.error, u.num_input_tokens, u.num_output_tokens, u.index, u.token_ids)
    if not u.logprobs and not u.top_logprobs and u.prompt_logprobs is None and u.prompt_top_logprobs is None:
        return head
    return (*head, u.logprobs, u.top_logprobs, u.prompt_logprobs, u.prompt_top_logprobs)


# The parent unpacks an item as (key, done, core.Update(*item[2:])).
