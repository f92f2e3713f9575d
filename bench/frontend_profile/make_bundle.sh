#!/usr/bin/env bash
# What device.sh needs on the GPU machine (Python 3.12 image): the front-end's wheels in .whl2/ (the image has
# neither them nor numpy < 2) and the trimmed Triton + packed tokenizer in .gpu/ (bench/gpu_perf's bundle).
# Run from the repository root after `make install` and one `llmserve prepare`; carry .whl2 and .gpu (< 64 MiB).
set -euo pipefail
[ -f .gpu/triton.tar.xz ] && [ -f .gpu/smol.tar.xz ] || bash bench/gpu_perf/make_bundle.sh
rm -rf .whl2 && mkdir .whl2
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl2 \
  aiosqlite==0.22.1 alembic==1.20.1 annotated-types==0.8.0 Deprecated==1.3.1 fastapi==0.165.0 greenlet==3.3.2 \
  httptools==0.9.0 importlib_metadata==10.2.0 limits==5.8.0 Mako==1.4.3 numpy==1.26.4 opentelemetry-api==1.45.2 \
  py-spy==0.4.3 pydantic==2.14.3 pydantic-settings==2.16.3 pydantic_core==2.50.4 python-dotenv==1.2.4 \
  python-json-logger==4.2.0 python-rapidjson==1.25 redis==8.1.0 SQLAlchemy==2.1.9 sqlmodel==0.0.50 \
  starlette==1.10.0 tritonclient==2.73.0 typing-inspection==0.4.5 uvicorn==0.54.0
grep -qx '/.whl2/' .git/info/exclude 2>/dev/null || echo '/.whl2/' >> .git/info/exclude
du -shc .whl2 .gpu
