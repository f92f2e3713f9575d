#!/usr/bin/env bash
# Build what bench/gpu_check/run.sh needs on the GPU machine (its image has torch but numpy 2, transformers
# 5.17 and no Triton): wheels in .whl/ and a trimmed bundled Triton plus the SmolLM2 config and tokenizer in
# .gpu/ (both ignored by git; carried by the device tool, 64 MiB in all). Run from the repository root after
# `make install` and one `llmserve prepare`.
set -euo pipefail
mkdir -p .whl .gpu/smol
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl numpy==1.26.4 transformers==5.23.0 tritonclient==2.73.0 python-rapidjson==1.25
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
stage=$(mktemp -d)
mkdir -p "$stage/pytriton/tritonserver/python_backend_stubs"
cp -r "$site/pytriton/tritonserver/bin" "$site/pytriton/tritonserver/backends" "$stage/pytriton/tritonserver/"
cp -r "$site/pytriton/tritonserver/python_backend_stubs/3.12" "$stage/pytriton/tritonserver/python_backend_stubs/"
touch "$stage/pytriton/__init__.py"
cp -r "$site/nvidia_pytriton.libs" "$stage/"
rm -f "$stage"/nvidia_pytriton.libs/libpython3-*.so*   # pytriton's own 3.13 runtime; the 3.12 stub uses the system's
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
tar cJf .gpu/triton.tar.xz -C "$stage" pytriton nvidia_pytriton.libs
model=${LLMSERVE_HOME:-$HOME/.cache/llmserve}/models/SmolLM2-135M-Instruct
cp "$model"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/smol/
du -sh .whl .gpu
