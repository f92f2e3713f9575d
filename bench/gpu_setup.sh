#!/usr/bin/env bash
# On the GPU machine: unpack what bench/gpu_bundle.sh packed here and make the venv that every GPU benchmark runs
# in. Every GPU run script sources it, from the repository root (it exports PATH, VIRTUAL_ENV, PYTHONPATH, ...):
#   source bench/gpu_setup.sh [DIR]       (DIR: the carried bundle, default .device/gpu)
# Afterwards: `python` is the venv's, IMAGE_PY the image's own python3, /tmp/smol SmolLM2's config and tokenizer.
#
# Why a venv over the image: the image has torch built for its CUDA, but numpy 2, with which the Triton python
# backend stub breaks (every response tensor arrives empty), and a scipy/scikit-learn built for numpy 2 that
# transformers would import and fail on. So: a plain venv, our packages linked in first (numpy 1.26 among them),
# then every entry of the image's site-packages that ours do not replace, except numpy, scipy and scikit-learn.
# Triton is started with this venv first on PATH and as VIRTUAL_ENV: that is how its stub finds the packages.
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,11p' "${BASH_SOURCE[0]}" | cut -c3-; return 0 2>/dev/null || exit 0; fi
_gpu_setup() {
  local bundle=${1:-.device/gpu} env=${GPU_ENV:-/tmp/gpuenv} site=${GPU_SITE:-/tmp/gpusite}
  local f e n
  for f in site smol; do
    [ -f "$bundle/$f.tar.xz" ] || [ -f "$env/.ready" ] ||
      { echo "gpu_setup: no $bundle/$f.tar.xz (build it with bench/gpu_bundle.sh and carry it)" >&2; return 1; }
  done
  # Optional parts (one device call carries 64 MiB, not all four): Triton for the served stages, FlashInfer for
  # the paged fast core's attention. On a warm machine (it keeps /tmp about 30 s after a call) a later call may
  # carry the parts an earlier one could not: they are added to the venv made then. (nvtools, NVIDIA's benchmark
  # tools, is unpacked apart: below.)
  local optional=""
  for f in triton flashinfer; do [ -f "$bundle/$f.tar.xz" ] && optional="$optional $f"; done
  export IMAGE_PY=${IMAGE_PY:-$(command -v python3)}
  if [ -f "$env/.ready" ]; then
    local venv_sp
    venv_sp=$("$env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    for f in $optional; do
      [ -f "$env/.part-$f" ] && continue
      tar xJf "$bundle/$f.tar.xz" -C "$site" || return 1
      for e in "$site"/*; do ln -sfn "$e" "$venv_sp/$(basename "$e")"; done
      touch "$env/.part-$f" && echo "gpu_setup: added $f to the venv"
    done
    if [ -f "$bundle/fi_aot.tar.xz" ] && [ -d "$site/flashinfer" ] && [ ! -f "$env/.part-fi_aot" ]; then
      mkdir -p "$site/flashinfer/data/aot" && tar xJf "$bundle/fi_aot.tar.xz" -C "$site/flashinfer/data/aot" &&
        touch "$env/.part-fi_aot" || return 1
    fi
  else  # once per machine
    local started=$SECONDS
    rm -rf "$site" "$env" && mkdir -p "$site"
    tar xJf "$bundle/site.tar.xz" -C "$site" && tar xJf "$bundle/smol.tar.xz" -C /tmp || return 1
    for f in $optional; do tar xJf "$bundle/$f.tar.xz" -C "$site" || return 1; done
    # FlashInfer modules compiled by an earlier run (bench/gpu_perf/run.sh saves them as $OUT/fi_aot.tar.xz): its
    # AOT directory, where it loads a module's .so without building it (minutes of nvcc per module otherwise).
    if [ -f "$bundle/fi_aot.tar.xz" ] && [ -d "$site/flashinfer" ]; then
      mkdir -p "$site/flashinfer/data/aot" && tar xJf "$bundle/fi_aot.tar.xz" -C "$site/flashinfer/data/aot" || return 1
    fi
    "$IMAGE_PY" -m venv "$env" || return 1
    local image_sp venv_sp ours
    image_sp=$("$IMAGE_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    venv_sp=$("$env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # Project names we carry, normalized (foo_bar-1.2.dist-info -> foo-bar), to skip the image's copies.
    ours=" $(cd "$site" && ls -d ./*.dist-info | sed -E 's#^\./##; s/-[0-9][^-]*\.dist-info$//; s/[_.]/-/g' | tr 'A-Z\n' 'a-z ') "
    for e in "$site"/*; do
      if [ "$(basename "$e")" != bin ]; then ln -sfn "$e" "$venv_sp/$(basename "$e")"; fi
    done
    for e in "$site"/bin/*; do
      if [ -e "$e" ]; then ln -sfn "$e" "$env/bin/"; fi  # carried binaries (py-spy)
    done
    for e in "$image_sp"/*; do
      n=$(basename "$e")
      case "$n" in numpy*|scipy*|sklearn*|scikit_learn*) continue;; esac
      if [ -e "$venv_sp/$n" ]; then continue; fi  # same module or file: ours (or the venv's own pip) wins
      if [[ $n == *.dist-info ]]; then
        local project
        project=$(echo "$n" | sed -E 's/-[0-9][^-]*\.dist-info$//; s/[_.]/-/g' | tr 'A-Z' 'a-z')
        if [[ $ours == *" $project "* ]]; then continue; fi
      fi
      ln -s "$e" "$venv_sp/$n"
    done
    touch "$env/.ready"
    for f in $optional; do touch "$env/.part-$f"; done
    if [ -f "$bundle/fi_aot.tar.xz" ]; then touch "$env/.part-fi_aot"; fi
    echo "gpu_setup: venv $env ready in $((SECONDS - started)) s"
  fi
  # NVIDIA's benchmark tools (the nvtools stage), apart from the venv: aiperf pins versions of packages ours
  # need newer (psutil, rich, prometheus-client, ...), so it runs under the image's python with its own first:
  #   PYTHONPATH=$NVTOOLS_DIR/aiperf $IMAGE_PY -m aiperf ...;  $NVTOOLS_DIR/bin/perf_analyzer
  if [ -f "$bundle/nvtools.tar.xz" ]; then
    if [ ! -f /tmp/nvtools/.ready ]; then
      rm -rf /tmp/nvtools && tar xJf "$bundle/nvtools.tar.xz" -C /tmp && touch /tmp/nvtools/.ready || return 1
    fi
    export NVTOOLS_DIR=/tmp/nvtools
    "$NVTOOLS_DIR/bin/perf_analyzer" --version || return 1  # fails here on a glibc older than 2.38
    PYTHONPATH=$NVTOOLS_DIR/aiperf HF_HUB_OFFLINE=1 "$IMAGE_PY" -c 'import aiperf.cli; print("gpu_setup: aiperf imports")' ||
      return 1
  fi
  export PATH="$env/bin:$PATH" VIRTUAL_ENV="$env" PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false LLMSERVE_HOME=${LLMSERVE_HOME:-/tmp/llmhome}
  # Fail here, in seconds, rather than minutes later inside `llmserve serve`.
  python - <<'PY' || return 1
import importlib
import importlib.util
for name in ("llmserve.cli", "llmserve.serve", "frontend_api.server.app", "engine_contract", "tritonclient.grpc"):
    importlib.import_module(name)
print("gpu_setup: carried", ", ".join(n for n in ("pytriton", "flashinfer") if importlib.util.find_spec(n)) or "no extras")
import numpy, torch, transformers
print(f"gpu_setup: numpy {numpy.__version__}, torch {torch.__version__} (cuda {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}; the stack imports")
assert numpy.__version__.startswith("1."), "the Triton python backend stub needs numpy < 2"
PY
}
_gpu_setup "$@"
