#!/usr/bin/env bash
# Packs kiln's release test, benchmark and example binaries into .gpu/kiln-bin.tar.xz (ignored by
# git), for a GPU machine that has the driver but no Rust toolchain, no Vulkan loader and no
# network; scripts/gpu-run.sh runs them there. Build and target machine must share the
# architecture and a compatible glibc.
#
# The GPU machine also needs the Vulkan loader and the libraries NVIDIA's Vulkan driver
# (libGLX_nvidia.so.0) links against, as .deb files in .gl/ (ignored by git). Fetch them once,
# on this machine (amd64 packages of this machine's Debian release):
#   echo /.gl/ >> .git/info/exclude; mkdir -p .gl /tmp/amd64/partial
#   o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
#   apt-get $o update
#   (cd .gl && apt-get $o download libvulkan1 libx11-6 libxext6 libxcb1 libxau6 libxdmcp6 \
#      libbsd0 libmd0 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
# Then carry both folders to the run, e.g. the device tool's `carry: [".gl", ".gpu"]`, and run
#   scripts/gpu-run.sh            (preflight, tests, benchmarks, the main job, PyTorch beside)
set -euo pipefail
cd "$(dirname "$0")/.."
# The packages gpu-run.sh's preflight may need: warn early rather than on the GPU machine.
for pkg in libvulkan1 libx11-6 libxext6 libxcb1 libxau6 libxdmcp6 libbsd0 libmd0; do
  compgen -G ".gl/${pkg}_*.deb" >/dev/null || echo "gpu-pack: .gl/ lacks ${pkg} (see the header)" >&2
done
bin=.gpu/bin
rm -rf "$bin" && mkdir -p "$bin"
# Test and bench executables, as cargo reports them (their names carry a hash).
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["kind"][0], m["target"]["name"], m["executable"])'
}
cargo test --release --workspace --all-features --no-run --message-format=json 2>/dev/null | executables |
  while read -r kind name exe; do cp "$exe" "$bin/test-$kind-$name"; done
cargo bench --all-features --no-run --message-format=json 2>/dev/null | executables |
  while read -r kind name exe; do [ "$kind" = bench ] && cp "$exe" "$bin/bench-$name"; done
cargo build --release --all-features --examples -q
for e in device_info lenet_mnist char_transformer generate gpt2_train; do cp "target/release/examples/$e" "$bin/"; done
strip "$bin"/* 2>/dev/null || true
# The binaries find data/ and test fixtures through the path they were built in.
pwd >"$bin/SOURCE_DIR"
XZ_OPT="-6 -T0" tar -cJf .gpu/kiln-bin.tar.xz -C .gpu bin
rm -rf "$bin"
ls -la .gpu/kiln-bin.tar.xz
