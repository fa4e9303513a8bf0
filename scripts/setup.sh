#!/usr/bin/env bash
# Shared set-up for README's two commands: make sure a Vulkan adapter exists.
# A machine with a GPU driver (or lavapipe already installed) is left untouched; otherwise the
# software Vulkan driver is installed so that kiln runs on the CPU.
set -euo pipefail

have_loader() { ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; }
have_icd() {
  local d
  for d in /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d; do
    compgen -G "$d/*.json" >/dev/null && return 0
  done
  [ -n "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]
}

if have_loader && have_icd; then
  exit 0
fi

echo "kiln setup: no Vulkan adapter found; installing the software Vulkan driver (mesa-vulkan-drivers libvulkan1)" >&2
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 >&2
have_loader && have_icd || { echo "kiln setup: Vulkan driver still missing after install" >&2; exit 1; }
