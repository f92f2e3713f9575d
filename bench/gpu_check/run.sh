#!/usr/bin/env bash
# GPU check of the llm engine (device tool). Recipe from shared/PLATFORM.md: a venv over the image's packages
# without its numpy 2 (which breaks the Triton python backend stub), with our carried wheels.
set -euo pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p /tmp/site && tar xJf .gpu/triton.tar.xz -C /tmp/site
python3 -m venv /tmp/stubenv
SP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
VSP=$(/tmp/stubenv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for e in "$SP"/*; do n=$(basename "$e"); case "$n" in numpy*|scipy*|sklearn*|scikit_learn*|transformers*) continue;; esac; ln -sfn "$e" "$VSP/$n"; done
/tmp/stubenv/bin/python -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
ln -sfn /tmp/site/pytriton "$VSP/pytriton"; ln -sfn /tmp/site/nvidia_pytriton.libs "$VSP/nvidia_pytriton.libs"
export PATH=/tmp/stubenv/bin:$PATH VIRTUAL_ENV=/tmp/stubenv PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python -c 'import numpy, torch, transformers; print("numpy", numpy.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())'
python bench/gpu_check/gpu_check.py
