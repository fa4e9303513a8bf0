#!/usr/bin/env bash
# Runs a program on a recent lavapipe that has cooperative matrices (VK_KHR_cooperative_matrix,
# 8 x 8 f16 fragments with f32 accumulators), so kiln's cooperative-matrix kernels can be tested
# on a machine without a GPU. Debian 12's Mesa 22.3 (and the 25.0 backport) lacks the extension;
# Debian sid's Mesa has it.
#
# The first run downloads sid's Mesa Vulkan driver and the libraries it needs, glibc included,
# into $KILN_MESA_DIR (default ~/.cache/kiln/mesa-sid), without installing anything. Programs then
# run under sid's dynamic loader, because that Mesa needs a newer glibc than the system's.
#
# As cargo's runner, for test binaries and examples:
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=scripts/lavapipe-coop.sh KILN_REQUIRE_COOP=1 \
#     cargo test --release -p kiln-ops --test ops f16
# or directly:  scripts/lavapipe-coop.sh target/release/examples/device_info
set -euo pipefail

dir=${KILN_MESA_DIR:-$HOME/.cache/kiln/mesa-sid}
root=$dir/root
lib=$root/usr/lib/x86_64-linux-gnu
icd=$root/usr/share/vulkan/icd.d/lvp_icd.json

if [ ! -f "$dir/ready" ]; then
  echo "lavapipe-coop: fetching Debian sid's Mesa into $dir" >&2
  mkdir -p "$dir/lists/partial" "$dir/debs/partial" "$dir/etc"
  echo "deb http://deb.debian.org/debian sid main" >"$dir/etc/sources.list"
  : >"$dir/status"
  # A private apt state: an empty package database makes apt fetch the whole dependency closure.
  apt_opts=(-qq -oDir::State::Lists="$dir/lists" -oDir::Etc::SourceList="$dir/etc/sources.list"
    -oDir::Etc::SourceParts=/nonexistent -oDir::State::status="$dir/status"
    -oDir::Cache::archives="$dir/debs" -oAPT::Architecture=amd64 -oAPT::Architectures=amd64
    -oDebug::NoLocking=1 -oAPT::Sandbox::User="$(id -un)")
  apt-get "${apt_opts[@]}" update >&2
  apt-get "${apt_opts[@]}" install -y --download-only --no-install-recommends \
    mesa-vulkan-drivers libvulkan1 >&2
  rm -rf "$root"
  for f in "$dir"/debs/*.deb; do dpkg -x "$f" "$root"; done
  sed -i "s#\"library_path\": \"[^\"]*\"#\"library_path\": \"$lib/libvulkan_lvp.so\"#" "$icd"
  touch "$dir/ready"
fi

export VK_DRIVER_FILES=$icd
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$@"
