#!/usr/bin/env bash
# The front-end measured alone: Triton serves the LOAD SOURCE (load_source.py, fixed-rate fake tokens behind the
# engine contract) and `llmserve bench` drives the same load through Triton gRPC directly and through the
# front-end's OpenAI SSE, side by side; py-spy samples the front-end process during the SSE run.
#   bash bench/frontend_profile/run.sh [OUT]      (after `make install`; CONCURRENCY=1,64,256 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-docs/perf/frontend-$(hostname -s)}
CONCURRENCY=${CONCURRENCY:-1,64,256}
TOKENS=${TOKENS:-128}
BIN=.venv/bin
MODEL=SmolLM2-135M-Instruct
mkdir -p "$OUT"
[ -x "$BIN/py-spy" ] || "$BIN/pip" install -q py-spy
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf "$work"' EXIT

echo ">> rendering a repository and putting the load source in place of the llm model"
"$BIN/llmserve" prepare --output "$work/build" --max-num-seqs 512 >/dev/null
cp bench/frontend_profile/load_source.py "$work/build/model_repository/$MODEL/1/model.py"

free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api=$(free_port); http=$(free_port); grpc=$(free_port); metrics=$(free_port)
LOAD_SOURCE_INTERVAL_MS=${LOAD_SOURCE_INTERVAL_MS:-10} LOAD_SOURCE_TOKENS_PER_CHUNK=${LOAD_SOURCE_TOKENS_PER_CHUNK:-1} \
  "$BIN/llmserve" serve --model-repository "$work/build/model_repository" --port "$api" --triton-http-port "$http" \
  --triton-grpc-port "$grpc" --triton-metrics-port "$metrics" --log-level warning > "$OUT/serve.log" 2>&1 &
serve=$!
for _ in $(seq 600); do curl -sf "127.0.0.1:$api/ready" >/dev/null && break; sleep 0.5; done
curl -sf "127.0.0.1:$api/ready" >/dev/null || { tail -30 "$OUT/serve.log"; exit 1; }

echo ">> Triton gRPC direct"
"$BIN/llmserve" bench --target triton --url "127.0.0.1:$grpc" --model "$MODEL" --concurrency "$CONCURRENCY" \
  --output-tokens "$TOKENS" --label triton-direct --out "$OUT"
echo ">> OpenAI SSE through the front-end (py-spy samples the front-end process)"
"$BIN/py-spy" record --pid "$serve" --rate 200 --format raw --output "$OUT/frontend.pyspy.txt" --nonblocking \
  > "$OUT/py-spy.log" 2>&1 &
spy=$!
"$BIN/llmserve" bench --target openai --url "http://127.0.0.1:$api/v1" --model "$MODEL" --concurrency "$CONCURRENCY" \
  --output-tokens "$TOKENS" --label openai-sse --out "$OUT"
kill -INT "$spy"; wait "$spy" || true
"$BIN/python" bench/frontend_profile/summarize.py "$OUT/frontend.pyspy.txt" | tee "$OUT/frontend-profile.txt"
"$BIN/python" -c 'import json, sys; from pathlib import Path; from llmserve.bench.report import plot
out = Path(sys.argv[1]); reports = [json.loads((out / f"{n}.json").read_text()) for n in ("triton-direct", "openai-sse")]
plot(reports, out / "side-by-side.png", "load source: Triton gRPC direct vs OpenAI SSE through the front-end")' "$OUT"
echo ">> wrote $OUT (side-by-side.png, *.json, frontend-profile.txt)"
