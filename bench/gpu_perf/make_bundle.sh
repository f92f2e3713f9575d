#!/usr/bin/env bash
# What bench/gpu_perf/run.sh needs on the GPU machine: bench/gpu_check's bundle (wheels in .whl/, trimmed Triton in
# .gpu/), plus the front-end's wheels, with the tokenizer folder xz-packed so that everything fits the 64 MiB a
# device call carries. Run from the repository root after `make install` and one `llmserve prepare`.
set -euo pipefail
bash "$(dirname "$0")/../gpu_check/make_bundle.sh"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.3 pydantic_core==2.50.4 pydantic-settings==2.16.3 \
  python-dotenv==1.2.4 annotated-types==0.8.0 typing-inspection==0.4.5 uvicorn==0.54.0 opentelemetry-api==1.45.2 \
  importlib_metadata==10.2.0
tar cJf .gpu/smol.tar.xz -C .gpu smol && rm -rf .gpu/smol
du -shc .whl .gpu
