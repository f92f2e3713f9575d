#!/usr/bin/env bash
# On a GPU machine of the device tool (many cores), with the bundle of `GPU_EXTRA=py-spy bash bench/gpu_bundle.sh`
# carried (.device/gpu; py-spy samples the front-end):
# the front-end measured alone against the LOAD SOURCE, with 1 and $WORKERS front-end processes, side by side
# with Triton gRPC direct. No GPU work happens: the load source replaces the engine. Results under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
WORKERS=${WORKERS:-4}; CONCURRENCY=${CONCURRENCY:-1,64,256}; TOKENS=${TOKENS:-128}; PROCESSES=${PROCESSES:-8}
MODEL=SmolLM2-135M-Instruct
echo "cores: $(nproc)"
cd "$(dirname "$0")/../.."
source bench/gpu_setup.sh "${GPU_BUNDLE:-.device/gpu}" || exit 1
command -v py-spy >/dev/null || { echo "no py-spy: build the bundle with GPU_EXTRA=py-spy bash bench/gpu_bundle.sh" >&2; exit 1; }
export LLMSERVE_HOME=/tmp/llmhome

touch /tmp/smol/model.safetensors  # LOAD SOURCE: `prepare` wants a checkpoint folder; no weights are ever read
python -m llmserve prepare --model "$MODEL=/tmp/smol" --output /tmp/fpbuild --max-num-seqs 1024 > "$OUT/prepare.log" 2>&1 || { cat "$OUT/prepare.log"; exit 1; }
cp bench/frontend_profile/load_source.py "/tmp/fpbuild/model_repository/$MODEL/1/model.py"

serve() {  # $1 = workers
  python -m llmserve serve --model-repository /tmp/fpbuild/model_repository --workers "$1" --port 8000 \
    --log-level warning > "$OUT/serve-w$1.log" 2>&1 &
  SERVE=$!
  for _ in $(seq 300); do curl -sf 127.0.0.1:8000/ready >/dev/null && return 0; sleep 0.5; done
  tail -40 "$OUT/serve-w$1.log"; return 1
}
bench() {  # $1 = target, $2 = url, $3 = label
  python -m llmserve bench --target "$1" --url "$2" --model "$MODEL" --concurrency "$CONCURRENCY" \
    --output-tokens "$TOKENS" --processes "$PROCESSES" --label "$3" --out "$OUT" 2>&1 | grep -v "req/s\]"
  rm -f "$OUT/$3.png"  # the side-by-side plot below has them all
}
serve 1 || exit 1
bench triton 127.0.0.1:8101 triton-direct
py-spy record --pid "$SERVE" --rate 100 --format raw --output "$OUT/frontend-w1.pyspy.txt" --nonblocking > /dev/null 2>&1 &
SPY=$!
bench openai http://127.0.0.1:8000/v1 openai-sse-1-worker
kill -INT $SPY; wait $SPY
python bench/frontend_profile/summarize.py "$OUT/frontend-w1.pyspy.txt" --top 15 > "$OUT/frontend-profile-w1.txt"; rm -f "$OUT/frontend-w1.pyspy.txt"
kill -TERM $SERVE; wait $SERVE
serve "$WORKERS" || exit 1
bench openai http://127.0.0.1:8000/v1 "openai-sse-$WORKERS-workers"
kill -TERM $SERVE; wait $SERVE
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from llmserve.bench.report import plot
out = Path(sys.argv[1])
reports = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
plot(reports, out / "side-by-side.png", "load source on a GPU host: Triton gRPC direct vs OpenAI SSE (1 and N workers)")
direct = {lv["concurrency"]: lv for lv in next(r for r in reports if r["label"] == "triton-direct")["levels"]}
for report in reports:
    for lv in report["levels"]:
        d = direct[lv["concurrency"]]
        print(f'{report["label"]:24} c={lv["concurrency"]:4} tok/s {lv["output_tokens_per_s"]:9.1f}  ratio {lv["output_tokens_per_s"] / d["output_tokens_per_s"]:.2f}  '
              f'TTFT p50 {lv["ttft_p50_ms"]:7.1f} ms (+{lv["ttft_p50_ms"] - d["ttft_p50_ms"]:.1f})  p99 {lv["ttft_p99_ms"]:7.1f}')
PY
cat "$OUT/frontend-profile-w1.txt"
