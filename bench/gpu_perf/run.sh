#!/usr/bin/env bash
# The GPU benchmark of docs/PERFORMANCE.md, on the GPU machine, from the repository root, with the bundle of
# bench/gpu_bundle.sh carried (.device/gpu). Stages (STAGES, comma-separated; default inprocess,triton):
#   inprocess  bench/gpu_perf/inprocess.py: greedy check, HF static generate, our core in process
#   paged      bench/gpu_perf/paged_inprocess.py: the paged fast core (FlashInfer): greedy checks, sweep x3,
#              prefix-cache TTFT (PAGED_ARGS); needs only the site, smol and flashinfer parts of the bundle;
#              PAGED_ARGS="--async-scheduling both --stages overlap,sweep": overlapped vs synchronous loop, interleaved
#   triton     bench/gpu_perf/triton_bench.py: `llmserve serve` + `llmserve bench` (Triton gRPC and OpenAI SSE)
#   hfstatic   HF generate under the image's own transformers;  profile: under ours (our core: paged_profile.py)
#   nvtools    bench/nvidia_tools/compare.py: `llmserve serve` (fast core), then perf_analyzer (Triton gRPC), aiperf
#              (OpenAI SSE) and `llmserve bench` on both, interleaved (NVTOOLS_ARGS); bundle parts site, triton,
#              smol, flashinfer (the fast core's attention), nvtools: two calls (docs/PERFORMANCE.md)
#   sampling   bench/gpu_perf/sampling_costs.py: each sampling feature's cost in process (SAMPLING_ARGS; with
#              BASELINE=DIR also greedy on an earlier core's modules in DIR, interleaved)
# Extra arguments: INPROCESS_ARGS and TRITON_ARGS, e.g. the throughput stages alone, levels of 8x the streams:
#   STAGES=triton TRITON_ARGS="--levels 64,256 --openai-levels 64,256 --requests-per-level 2048" bash bench/gpu_perf/run.sh
# and the fast core in a child process of Triton's model (the default) against in it, both stacks up, level by level:
#   STAGES=triton TRITON_ARGS="--engine-process both --levels 64,256 --openai-levels 256 --requests-per-level 2048" ...
# Results land in $OUT (the device tool brings them back); copy them to docs/perf/<run>/.
set -uo pipefail
case "${1:-}" in -h|--help) sed -n '2,19p' "$0" | cut -c3-; exit 0;; esac
cd "$(dirname "$0")/../.."
source bench/gpu_setup.sh "${GPU_BUNDLE:-.device/gpu}" || exit 1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STAGES=${STAGES:-inprocess,triton}
MODEL_CODE=$PWD/model_repository/llm/1  # the engine's modules, for the stages that drive the core in process
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
# shellcheck disable=SC2086  # *_ARGS are word lists on purpose
if [[ $STAGES == *inprocess* ]]; then
  PYTHONPATH=$PYTHONPATH:$MODEL_CODE python bench/gpu_perf/inprocess.py --tokenizer /tmp/smol ${INPROCESS_ARGS:-} 2>&1 |
    grep -v -i "warn\|Loading weights\|Writing model" | tee "$OUT/inprocess.log"
fi
if [[ $STAGES == *paged* ]]; then
  PYTHONPATH=$PYTHONPATH:$MODEL_CODE:$PWD/bench/gpu_perf python bench/gpu_perf/paged_inprocess.py ${PAGED_ARGS:-} 2>&1 |
    grep -v -i "warn\|Loading weights\|Writing model" | tee "$OUT/paged.log"
fi
if [[ $STAGES == *triton* ]]; then
  [[ -d /tmp/ckpt ]] || PYTHONPATH=$PYTHONPATH:$MODEL_CODE python bench/gpu_perf/inprocess.py --checkpoint-only --shape 1b --ckpt /tmp/ckpt --tokenizer /tmp/smol ||
    exit 1
  python bench/gpu_perf/triton_bench.py --bench-out /tmp/bench ${TRITON_ARGS:-} 2>&1 | grep -v "it/s]" | tee "$OUT/triton.log"
  cp /tmp/bench/*.json "$OUT/"
fi
if [[ $STAGES == *nvtools* ]]; then  # NVIDIA's tools and ours on one served stack (docs/PERFORMANCE.md)
  [[ -n ${NVTOOLS_DIR:-} ]] || { echo "nvtools: no nvtools.tar.xz in the bundle (PARTS=nvtools bench/gpu_bundle.sh)" >&2; exit 1; }
  [[ -d /tmp/ckpt ]] || PYTHONPATH=$PYTHONPATH:$MODEL_CODE python bench/gpu_perf/inprocess.py --checkpoint-only --shape 1b --ckpt /tmp/ckpt --tokenizer /tmp/smol ||
    exit 1
  # aiperf runs under the image's python with its own packages first (its pins clash with ours: bench/gpu_setup.sh),
  # and without HF_HUB_OFFLINE: offline, aiperf 0.13 resolves --tokenizer as a hub id in the cache and refuses a local
  # directory (seen on the H200, 2026-12-03); online it reads a local directory as it is, with no network.
  python bench/nvidia_tools/compare.py --serve gpu --model gpu --checkpoint /tmp/ckpt --tokenizer /tmp/smol \
    --levels 1,64,256 --requests-per-level 16,512,2048 --rounds 1 --processes 8 --run-timeout 240 \
    --perf-analyzer "$NVTOOLS_DIR/bin/perf_analyzer" --aiperf "env -u HF_HUB_OFFLINE -u TRANSFORMERS_OFFLINE PYTHONPATH=$NVTOOLS_DIR/aiperf $IMAGE_PY -m aiperf" \
    --out /tmp/nvtools ${NVTOOLS_ARGS:-} 2>&1 | tee "$OUT/nvtools.log"
  python bench/nvidia_tools/summarize.py /tmp/nvtools | tee -a "$OUT/nvtools.log"
  # $OUT brings back few files, two folders deep at most: the table's JSON, and the tools' own outputs packed
  cp /tmp/nvtools/results.json "$OUT/nvtools-results.json"
  tar cJf "$OUT/nvtools-raw.tar.xz" -C /tmp/nvtools raw serve.log
fi
if [[ $STAGES == *sampling* ]]; then
  PYTHONPATH=$PYTHONPATH:$MODEL_CODE:$PWD/bench/gpu_perf python bench/gpu_perf/sampling_costs.py \
    ${BASELINE:+--baseline "$BASELINE"} ${SAMPLING_ARGS:-} 2>&1 | grep -v -i "warn\|Loading weights" | tee "$OUT/sampling.log"
fi
if [[ $STAGES == *hfstatic* ]]; then  # the image's interpreter and packages, away from the repository
  (cd /tmp && PYTHONPATH='' "$IMAGE_PY" "$OLDPWD/bench/gpu_perf/extra.py" --label image-transformers) 2>&1 |
    grep -v -i warn | tee "$OUT/extra.log"
fi
if [[ $STAGES == *profile* ]]; then
  PYTHONPATH=$PYTHONPATH:$MODEL_CODE python bench/gpu_perf/extra.py --label our-venv 2>&1 |
    grep -v -i warn | tee -a "$OUT/extra.log"
fi
# FlashInfer modules this run compiled (nvcc, minutes each), saved for the next run's bundle when it carried none:
# copy $OUT/fi_aot.tar.xz to .device/gpu/ and bench/gpu_setup.sh unpacks it into FlashInfer's AOT directory.
if [[ ! -f ${GPU_BUNDLE:-.device/gpu}/fi_aot.tar.xz ]]; then
  jit=$(find "${FLASHINFER_WORKSPACE_BASE:-$HOME}/.cache/flashinfer" -type d -name cached_ops 2>/dev/null | head -1)
  if [[ -n $jit ]] && compgen -G "$jit/*/*.so" > /dev/null; then
    (cd "$jit" && tar cJf "$OUT/fi_aot.tar.xz" ./*/*.so) && echo "saved $(cd "$jit" && ls -d ./*/ | wc -l) FlashInfer modules to \$OUT/fi_aot.tar.xz"
  fi
fi
