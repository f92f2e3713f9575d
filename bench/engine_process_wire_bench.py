"""What one batch of engine updates costs on the engine-process wire (engine_process_wire.py), per batch of N
plain updates (one token each, as under load): the child's side (pack + pickle) and the parent's (unpickle +
core.Update), against pickling the core.Update dataclasses themselves.

    PYTHONPATH=.:model_repository/llm/1 python bench/engine_process_wire_bench.py [--batch 256] [--out wire.json]
"""

from __future__ import annotations

import argparse
import json
import pickle
import time

import engine_process_wire as wire
from core import Update


def per_call_us(function, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - started) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--out", default=None, help="write the numbers as JSON here too")
    args = parser.parse_args()
    updates = [(key, Update(" word", None, None, 128, 57, 0, (1234,))) for key in range(args.batch)]
    packed = [wire.pack(key, False, update) for key, update in updates]
    as_tuples, as_dataclasses = pickle.dumps(packed, wire.PROTOCOL), pickle.dumps(updates, wire.PROTOCOL)
    numbers = {
        "batch": args.batch,
        "child_pack_us": per_call_us(lambda: [wire.pack(k, False, u) for k, u in updates], args.repeat),
        "child_pickle_tuples_us": per_call_us(lambda: pickle.dumps(packed, wire.PROTOCOL), args.repeat),
        "parent_unpickle_tuples_us": per_call_us(lambda: pickle.loads(as_tuples), args.repeat),
        "parent_updates_us": per_call_us(lambda: [Update(*item[2:]) for item in packed], args.repeat),
        "tuples_bytes": len(as_tuples),
        "pickle_dataclasses_us": per_call_us(lambda: pickle.dumps(updates, wire.PROTOCOL), args.repeat),
        "unpickle_dataclasses_us": per_call_us(lambda: pickle.loads(as_dataclasses), args.repeat),
        "dataclasses_bytes": len(as_dataclasses),
    }
    for name, value in numbers.items():
        print(f"{name:>28}  {value:10.1f}")
    if args.out:
        with open(args.out, "w") as out:
            json.dump(numbers, out, indent=1)


if __name__ == "__main__":
    main()
