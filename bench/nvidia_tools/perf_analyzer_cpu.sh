#!/usr/bin/env bash
# perf_analyzer on a machine whose glibc is older than 2.38 (this Debian 12 has 2.36): the perf-analyzer 2.60
# wheel's binary needs GLIBC_2.38 and GLIBCXX_3.4.32, so it runs under Debian 13's loader and libraries (libc6,
# libstdc++6, libgcc-s1, libssl3t64, zlib1g, fetched with apt-get from Debian's archive into DIR, not installed).
#   bash bench/nvidia_tools/perf_analyzer_cpu.sh [DIR]     (default /tmp/perf_analyzer; prints the command to use)
# Then: python bench/nvidia_tools/compare.py --perf-analyzer "$(bash bench/nvidia_tools/perf_analyzer_cpu.sh)" ...
# A GPU machine (glibc 2.39) runs the binary as is (bench/gpu_bundle.sh's nvtools part).
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,7p' "$0" | cut -c3-; exit 0;; esac
DIR=${1:-/tmp/perf_analyzer}
PY=${PY:-python3}
libs=$DIR/root/usr/lib/x86_64-linux-gnu
if [ ! -x "$DIR/perf_analyzer" ] || [ ! -e "$libs/ld-linux-x86-64.so.2" ]; then
  mkdir -p "$DIR/apt/lists/partial" "$DIR/apt/cache/archives/partial" "$DIR/debs"
  # The archive this machine's apt already uses (its first Debian source), for the trixie suite.
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2; exit}')
  uri=${uri:-$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)}
  [ -n "$uri" ] || { echo "no Debian archive found in /etc/apt" >&2; exit 1; }
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" > "$DIR/apt/sources.list"
  apt=(-o Dir::Etc::SourceList="$DIR/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o Dir::State::Lists="$DIR/apt/lists" -o Dir::Cache="$DIR/apt/cache")  # this machine's apt stays as it is
  apt-get "${apt[@]}" update -qq >&2
  (cd "$DIR/debs" && apt-get "${apt[@]}" download libc6 libstdc++6 libgcc-s1 libssl3t64 zlib1g >&2 2>/dev/null)
  for deb in "$DIR"/debs/*.deb; do dpkg-deb -x "$deb" "$DIR/root"; done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 -d "$DIR" \
    perf-analyzer==2.60.0 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  "$PY" - "$DIR" <<'PY'
import pathlib, sys, zipfile
folder = pathlib.Path(sys.argv[1])
wheel = next(folder.glob("perf_analyzer-*.whl"))
out = folder / "perf_analyzer"
out.write_bytes(zipfile.ZipFile(wheel).read("perf_analyzer/bin/perf_analyzer"))
out.chmod(0o755)
PY
fi
command="$libs/ld-linux-x86-64.so.2 --library-path $libs $DIR/perf_analyzer"
$command --version >&2
echo "$command"
