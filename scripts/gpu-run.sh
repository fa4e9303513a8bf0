#!/usr/bin/env bash
# Runs, on a bare GPU machine (NVIDIA's driver, no Vulkan loader, no Rust, no network), what
# scripts/gpu-pack.sh packed into .gpu/, with the Vulkan loader and the X libraries NVIDIA's Vulkan
# driver needs coming from the .deb files in .gl/ (see gpu-pack.sh for how to fetch them).
#
#   scripts/gpu-run.sh [preflight|tests|bench|main|pytorch|all]...     (default: all)
#
# Results go to $OUT (default /tmp/kiln-gpu), appended as each binary finishes, so a failure late
# in the run keeps what came before:
#   preflight.txt   what the preflight found (ICD file, driver library, missing libraries)
#   device_info.txt the adapter kiln chose, its limits and features
#   tests.txt       every test binary's output
#   kiln.jsonl      kiln's benchmark and main-job JSON lines (scripts/bench_table.py reads them)
#   pytorch.jsonl   benches/pytorch/* JSON lines on the same GPU
#   bench.err, pytorch.err   their stderr
# Every binary runs under `timeout` (KILN_TIMEOUT seconds, default 300; tests KILN_TEST_TIMEOUT,
# default 600). The run stops with a clear message when no Vulkan GPU adapter appears
# (KILN_ALLOW_SOFTWARE=1 lets lavapipe through, to try the script on a machine without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/kiln-gpu}
mkdir -p "$out" && out=$(cd "$out" && pwd)
t_bin=${KILN_TIMEOUT:-300}
t_test=${KILN_TEST_TIMEOUT:-600}
parts=${*:-all}
want() { [[ " $parts " == *" all "* || " $parts " == *" $1 "* ]]; }
log() { echo "$*" | tee -a "$out/preflight.txt" >&2; }
die() {
  log "gpu-run: $*"
  exit 1
}

# ---- preflight: the loader, the ICD file, the driver library and what it links against ----
: >"$out/preflight.txt"
install_debs() {
  if compgen -G ".gl/*.deb" >/dev/null; then
    log "installing $(ls .gl/*.deb | wc -l) carried packages from .gl/ (dpkg -x into /)"
    for f in .gl/*.deb; do dpkg -x "$f" / || log "dpkg -x $f failed"; done
    ldconfig || true
  else
    log "no .gl/*.deb carried (see scripts/gpu-pack.sh)"
  fi
}
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
  log "no Vulkan loader (libvulkan.so.1) installed"
  install_debs
  debs_done=1
fi
# NVIDIA's ICD file lives in different places depending on how the driver was installed.
icd=${VK_DRIVER_FILES:-}
if [ -z "$icd" ] || [ ! -f "$icd" ]; then
  icd=$(find /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d \
    /usr/local/nvidia /usr/lib/x86_64-linux-gnu/nvidia /usr/local/cuda/compat \
    -maxdepth 6 -name 'nvidia_icd*.json' 2>/dev/null | head -1)
fi
[ -n "$icd" ] || die "no NVIDIA Vulkan ICD file (nvidia_icd*.json) in /usr/share/vulkan/icd.d, /etc/vulkan/icd.d, /usr/local/nvidia or /usr/lib/x86_64-linux-gnu/nvidia: is the driver installed with its Vulkan part?"
export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd
log "ICD file: $icd"
lib=$(sed -n 's/.*"library_path"[^"]*"\([^"]*\)".*/\1/p' "$icd" | head -1)
[ -n "$lib" ] || die "$icd names no library_path"
if [[ "$lib" != /* ]]; then
  # A bare name: where the dynamic loader would find it (ldconfig's cache or the usual folders).
  found=$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 == l { print $NF; exit }')
  for d in /usr/lib/x86_64-linux-gnu /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib64 \
    "$(dirname "$icd")/../../../lib64" "$(dirname "$icd")/../../../lib"; do
    [ -z "$found" ] && [ -e "$d/$lib" ] && found="$d/$lib"
  done
  [ -n "$found" ] && lib=$found
fi
[ -e "$lib" ] || die "the ICD's driver library $lib is not on this machine"
log "driver library: $lib"
missing=$(ldd "$lib" 2>&1 | awk '/not found/ { print $1 }')
if [ -n "$missing" ] && [ -z "${debs_done:-}" ]; then
  # Without these (libX11, libXext, libxcb, libXau, libXdmcp, libbsd, libmd) the loader drops the
  # driver silently and only a software adapter (or none) appears.
  log "the driver library lacks: $(echo $missing)"
  install_debs
  missing=$(ldd "$lib" 2>&1 | awk '/not found/ { print $1 }')
fi
[ -z "$missing" ] || die "the driver library still lacks $(echo $missing): carry their .deb files in .gl/ (scripts/gpu-pack.sh)"
log "driver library links completely"

# ---- the packed binaries ----
[ -f .gpu/kiln-bin.tar.xz ] || die "no .gpu/kiln-bin.tar.xz: run scripts/gpu-pack.sh on the build machine and carry .gpu"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xJf .gpu/kiln-bin.tar.xz -C "$tmp" || die "unpacking .gpu/kiln-bin.tar.xz failed"
B=$tmp/bin
src=$(cat "$B/SOURCE_DIR")
# The binaries find data/ and test fixtures through the path they were built in.
if [ "$src" != "$PWD" ] && [ ! -e "$src" ]; then
  mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"
fi

timeout "$t_bin" "$B/device_info" >"$out/device_info.txt" 2>&1
status=$?
cat "$out/device_info.txt" >>"$out/preflight.txt"
[ $status -eq 0 ] || die "device_info failed (exit $status): no Vulkan adapter; see $out/device_info.txt"
# KILN_ALLOW_SOFTWARE=1 lets a software adapter through (to try this script without a GPU).
if [ -z "${KILN_ALLOW_SOFTWARE:-}" ] &&
  ! grep -q '"device_type":"DiscreteGpu"\|"device_type":"IntegratedGpu"' "$out/device_info.txt"; then
  die "no GPU adapter appeared (only: $(grep -o '"adapter":"[^"]*"' "$out/device_info.txt")); the driver was not loaded"
fi
want preflight && [[ " $parts " != *" all "* ]] && exit 0

# Runs one binary under `timeout`, its JSON lines appended to $2 as they come.
run_json() {
  local limit=$1 dest=$2 err=$3
  shift 3
  echo "== $* ($(date -u +%H:%M:%S))" >>"$err"
  timeout "$limit" "$@" 2>>"$err" | grep --line-buffered '^{' >>"$dest"
  local s=${PIPESTATUS[0]}
  [ "$s" -eq 0 ] || echo "== exit $s: $*" >>"$err"
}

if want tests; then
  # A GPU with cooperative matrices must run the f16 path, not only its fallback.
  grep -q '"cooperative_matrix":true' "$out/device_info.txt" && export KILN_REQUIRE_COOP=1
  for t in "$B"/test-*; do
    echo "== $(basename "$t") ($(date -u +%H:%M:%S))" >>"$out/tests.txt"
    timeout "$t_test" "$t" >>"$out/tests.txt" 2>&1
    s=$?
    [ $s -eq 0 ] || echo "== exit $s: $(basename "$t")" >>"$out/tests.txt"
  done
fi
if want bench; then
  for b in matmul attention conv2d rows mlp_step cold_start; do
    run_json "$t_bin" "$out/kiln.jsonl" "$out/bench.err" "$B/bench-$b" --bench
  done
  # Attention (causal B8 H12 T1024 D64, f32 and f16, forward and forward + backward) with the
  # f32 kernels' other exchange (workgroup memory instead of subgroup shuffles) and the f16
  # calls widened to them, beside the policy's choice above; pytorch.jsonl has SDPA's figures.
  KILN_KERNELS=attention=flash run_json "$t_bin" "$out/kiln.jsonl" "$out/bench.err" \
    "$B/bench-attention" --bench --dtype f32,f16
  # The f16 GEMM's smaller cooperative tile beside the policy's choice (matmul_f16 lines).
  KILN_KERNELS=matmul_f16=coop16_small run_json "$t_bin" "$out/kiln.jsonl" "$out/bench.err" \
    "$B/bench-matmul" --bench 4096
  run_json "$t_bin" "$out/kiln.jsonl" "$out/bench.err" "$B/bench-train_step" --bench --profile
fi
if want main; then
  run_json "$t_bin" "$out/kiln.jsonl" "$out/bench.err" "$B/lenet_mnist"
  run_json "$t_bin" "$out/kiln.jsonl" "$out/bench.err" "$B/char_transformer" --preset gpu --steps 200
  # GPT-2 small's shape (random weights): generation with the key/value cache (gemv, split-KV).
  run_json "$t_bin" "$out/kiln.jsonl" "$out/bench.err" "$B/generate" --random-small --max-new-tokens 256 --greedy
  # GPT-2 small as llm.c trains it: micro-batches of 16 x 1,024 accumulated to 0.5M tokens, 20
  # steps (tokens/s and MFU per step; the BPE and shards are made first, in a minute or so).
  run_json "${KILN_GPT2_TIMEOUT:-1800}" "$out/kiln.jsonl" "$out/bench.err" "$B/gpt2_train" \
    --preset gpu --steps 20 --eval-every 20 --eval-batches 2 --sample-tokens 32 \
    --shards "$out/gpt2-shards"
fi
if want pytorch; then
  for s in matmul attention conv2d rows train_step gpt2_train; do
    (cd benches/pytorch && run_json "$t_bin" "$out/pytorch.jsonl" "$out/pytorch.err" python3 "$s.py")
  done
fi
exit 0
