"""Summarize py-spy's raw (collapsed) stacks: where the front-end process spends its samples.
python bench/frontend_profile/summarize.py frontend.pyspy.txt [--top 25]"""

from __future__ import annotations

import argparse
import re
from collections import Counter

# Buckets by the first matching frame, innermost first: what a sample was doing.
BUCKETS = [
    # py-spy sees Python frames only: time inside uvloop's C loop (socket reads and writes, callbacks, waiting)
    # is charged to the frame that started the loop, and native threads to Thread.run.
    ("event loop in C (uvloop: sockets, scheduling, idle)", r"^Runner\.run |^run_forever"),
    ("native threads (gRPC poller, tokenizer pool)", r"^Thread\.run |^Condition\.wait |^_worker "),
    ("gRPC client (tritonclient / grpc.aio)", r"grpc|tritonclient"),
    ("SSE framing + pydantic serialization", r"model_dump_json|sse_event|serializ"),
    ("metrics + access log", r"observability|prometheus"),
    ("limits", r"limits\.py|limits/"),
    ("tokenizer / chat template", r"tokenization|tokenizers|jinja"),
    ("HTTP server (uvicorn / h11 / starlette)", r"uvicorn|h11|httptools|starlette"),
    ("asyncio machinery", r"asyncio"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    own: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    total = 0
    for line in open(args.raw):
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] += samples
        for name, pattern in BUCKETS:
            if any(re.search(pattern, frame) for frame in [frames[-1]] if pattern.startswith("^")) or (
                not pattern.startswith("^") and any(re.search(pattern, frame) for frame in frames[-6:])
            ):
                buckets[name] += samples
                break
        else:
            buckets["other"] += samples
    print(f"{total} samples of the front-end process (all threads)\n")
    print("share  what")
    for name, samples in buckets.most_common():
        print(f"{100 * samples / total:5.1f}%  {name}")
    print(f"\ntop {args.top} frames by own samples")
    for frame, samples in own.most_common(args.top):
        print(f"{100 * samples / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
