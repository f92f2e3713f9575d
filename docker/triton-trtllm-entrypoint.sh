#!/usr/bin/env bash
# Entry point of Dockerfile.triton: serve the TensorRT-LLM repository in $LLMSERVE_TRTLLM_OUTPUT, building the
# engines there first when it has none. Settings (environment):
#   LLMSERVE_TRTLLM_MODEL       HF checkpoint to build (default: the embedded SmolLM2-135M-Instruct, converted)
#   LLMSERVE_TRTLLM_BUILD_ARGS  more `llmserve build` flags, e.g. "--dtype fp16 --quantization fp8 --max-seq-len 4096"
#   LLMSERVE_TP_SIZE            tensor-parallel size: GPUs per engine, one Triton rank (MPI process) per GPU
#   LLMSERVE_BUILD_ON_START     1 (default): build when no engines are there; 0: fail instead (mounted engines)
#   LLMSERVE_TRITON_{HTTP,GRPC,METRICS}_PORT  (8100, 8101, 8102: llmserve's defaults)
set -euo pipefail

out="${LLMSERVE_TRTLLM_OUTPUT:-/srv/llmserve/trtllm}"
tp="${LLMSERVE_TP_SIZE:-1}"

if [[ ! -f "$out/model_repository/tensorrt_llm/config.pbtxt" ]]; then
    if [[ "${LLMSERVE_BUILD_ON_START:-1}" != "1" ]]; then
        echo "llmserve-triton: no engines in $out; mount a \`llmserve build\` output there or set LLMSERVE_BUILD_ON_START=1" >&2
        exit 1
    fi
    model="${LLMSERVE_TRTLLM_MODEL:-}"
    if [[ -z "$model" ]]; then
        model="$LLMSERVE_HOME/models/SmolLM2-135M-Instruct"
        python3 -c "import sys; from pathlib import Path; from build_engines.checkpoints import ensure_smollm2; ensure_smollm2(Path(sys.argv[1]))" "$model"
    fi
    # shellcheck disable=SC2086  # the extra flags are meant to split
    llmserve build --engine trtllm --model "$model" --output "$out" --tp "$tp" ${LLMSERVE_TRTLLM_BUILD_ARGS:-}
fi

args=(--model-repository="$out/model_repository"
      --http-port="${LLMSERVE_TRITON_HTTP_PORT:-8100}" --grpc-port="${LLMSERVE_TRITON_GRPC_PORT:-8101}"
      --metrics-port="${LLMSERVE_TRITON_METRICS_PORT:-8102}" --disable-auto-complete-config)
if [[ "$tp" == "1" ]]; then
    exec tritonserver "${args[@]}"
fi
# One rank per GPU under MPI, as TensorRT-LLM's launch_triton_server.py lays it out (that script starts mpirun in
# the background and returns, which would end the container); ranks > 0 load only the engine model.
cmd=(mpirun --allow-run-as-root)
for ((rank = 0; rank < tp; rank++)); do
    cmd+=(-n 1 tritonserver "${args[@]}" "--backend-config=python,shm-region-prefix-name=prefix${rank}_")
    if ((rank > 0)); then
        cmd+=(--model-control-mode=explicit --load-model=tensorrt_llm)
    fi
    cmd+=(:)
done
exec "${cmd[@]}"
