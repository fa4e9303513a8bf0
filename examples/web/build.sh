#!/usr/bin/env bash
# Builds the page: the kiln-web crate for wasm32-unknown-unknown (release), then wasm-bindgen's
# JavaScript bindings into examples/web/pkg/. Serve the repository root over HTTP and open
# /examples/web/ (the page fetches ../../data/mnist), e.g.
#   ./examples/web/build.sh && python3 -m http.server 8000   # then http://localhost:8000/examples/web/
# Needs the wasm32 target and wasm-bindgen-cli at the version of the wasm-bindgen crate in
# Cargo.lock: ./scripts/setup.sh --tests installs both.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
cd "$root"
cargo build --release --target wasm32-unknown-unknown -p kiln-web
wasm-bindgen --target web --no-typescript --out-dir "$root/examples/web/pkg" \
  "$target/wasm32-unknown-unknown/release/kiln_web.wasm"
