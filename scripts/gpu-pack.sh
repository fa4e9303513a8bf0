#!/usr/bin/env bash
# Packs kiln's release test, benchmark and example binaries into .gpu/kiln-bin.tar.xz (ignored by
# git), for a GPU machine that has the driver but no Rust toolchain; scripts/gpu-run.sh runs them
# there. Build and target machine must share the architecture and a compatible glibc.
set -euo pipefail
cd "$(dirname "$0")/.."
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
cargo test --release --workspace --no-run --message-format=json 2>/dev/null | executables |
  while read -r kind name exe; do cp "$exe" "$bin/test-$kind-$name"; done
cargo bench --no-run --message-format=json 2>/dev/null | executables |
  while read -r kind name exe; do [ "$kind" = bench ] && cp "$exe" "$bin/bench-$name"; done
cargo build --release --examples -q
for e in device_info lenet_mnist char_transformer; do cp "target/release/examples/$e" "$bin/"; done
strip "$bin"/* 2>/dev/null || true
# The binaries find data/ and test fixtures through the path they were built in.
pwd >"$bin/SOURCE_DIR"
XZ_OPT="-6 -T0" tar -cJf .gpu/kiln-bin.tar.xz -C .gpu bin
rm -rf "$bin"
ls -la .gpu/kiln-bin.tar.xz
