#!/usr/bin/env bash
# The GPU benchmark of docs/PERFORMANCE.md, on the device machine, with .whl and .gpu carried (built here by
# bench/gpu_perf/make_bundle.sh). Recipe of shared/PLATFORM.md: a venv over the image's packages without its numpy 2.
set -uo pipefail
IMAGE_PY=$(command -v python3)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
mkdir -p /tmp/site && tar xJf .gpu/triton.tar.xz -C /tmp/site && tar xJf .gpu/smol.tar.xz -C /tmp
python3 -m venv /tmp/stubenv
SP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
VSP=$(/tmp/stubenv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for e in "$SP"/*; do n=$(basename "$e"); case "$n" in numpy*|scipy*|sklearn*|scikit_learn*|transformers*) continue;; esac; ln -sfn "$e" "$VSP/$n"; done
/tmp/stubenv/bin/python -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
ln -sfn /tmp/site/pytriton "$VSP/pytriton"; ln -sfn /tmp/site/nvidia_pytriton.libs "$VSP/nvidia_pytriton.libs"
export PATH=/tmp/stubenv/bin:$PATH VIRTUAL_ENV=/tmp/stubenv PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
python -c 'import numpy, torch, transformers; print("numpy", numpy.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'
STAGES=${STAGES:-inprocess,triton}
if [[ $STAGES == *inprocess* ]]; then python bench/gpu_perf/inprocess.py --tokenizer /tmp/smol "$@" 2>&1 | grep -v -i "warn\|Loading weights\|Writing model" | tee "$OUT/inprocess.log"; fi
if [[ $STAGES == *triton* ]]; then
  [[ -d /tmp/ckpt ]] || python -c 'import sys; sys.argv=["x"]; sys.path[:0]=["bench/gpu_perf"]; import inprocess as i; from pathlib import Path; i.build_checkpoint("1b", Path("/tmp/ckpt"), Path("/tmp/smol"), "cuda")'
  python bench/gpu_perf/triton_bench.py --bench-out /tmp/bench 2>&1 | grep -v "it/s]" | tee "$OUT/triton.log"
  cp /tmp/bench/*.json "$OUT/"
fi
if [[ $STAGES == *hfstatic* ]]; then  # HF generate under the image's own transformers, then ours (+ prefill profile)
  (cd /tmp && PYTHONPATH= "$IMAGE_PY" "$OLDPWD/bench/gpu_perf/extra.py" --label image-transformers) 2>&1 | grep -v -i warn | tee "$OUT/extra.log"
fi
if [[ $STAGES == *profile* ]]; then  # HF generate under our transformers, and a profile of our prefill
  python bench/gpu_perf/extra.py --label our-venv --profile-prefill 2>&1 | grep -v -i warn | tee -a "$OUT/extra.log"
fi
