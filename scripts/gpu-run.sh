#!/usr/bin/env bash
# Runs, on a GPU machine without a Rust toolchain, what scripts/gpu-pack.sh packed, writing at most
# six files into $OUT: device_info.txt, tests.txt, kiln.jsonl, bench.err, pytorch.jsonl,
# pytorch.err. Parts: tests, bench, pytorch, main (the main job), or all (the default), e.g.
#   scripts/gpu-run.sh tests bench
# Vulkan loaders, where the machine lacks them, come as .deb files in .gl/ (see ../shared/GPU_NOTES.md).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/kiln-gpu}
mkdir -p "$out"
if compgen -G ".gl/*.deb" >/dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ] && export VK_DRIVER_FILES=$icd
tmp=$(mktemp -d)
tar -xJf .gpu/kiln-bin.tar.xz -C "$tmp"
B=$tmp/bin
src=$(cat "$B/SOURCE_DIR")
if [ "$src" != "$PWD" ] && [ ! -e "$src" ]; then
  mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"
fi
parts=${*:-all}
want() { [[ " $parts " == *" all "* || " $parts " == *" $1 "* ]]; }
"$B/device_info" >"$out/device_info.txt" 2>&1
if want tests; then
  # A GPU with cooperative matrices must run the f16 path, not only its fallback.
  grep -q '"cooperative_matrix":true' "$out/device_info.txt" && export KILN_REQUIRE_COOP=1
  for t in "$B"/test-*; do echo "== $(basename "$t")"; "$t" 2>&1; done >"$out/tests.txt"
fi
if want bench; then
  for b in matmul conv2d attention mlp_step cold_start; do "$B/bench-$b" --bench; done \
    2>>"$out/bench.err" | grep '^{' >>"$out/kiln.jsonl"
  "$B/bench-train_step" --bench --profile 2>>"$out/bench.err" | grep '^{' >>"$out/kiln.jsonl"
fi
if want main; then
  "$B/lenet_mnist" 2>>"$out/bench.err" | grep '^{' >>"$out/kiln.jsonl"
fi
if want pytorch; then
  for s in matmul conv2d attention train_step; do
    (cd benches/pytorch && python3 "$s.py") 2>>"$out/pytorch.err"
  done | grep '^{' >>"$out/pytorch.jsonl"
fi
rm -rf "$tmp"
