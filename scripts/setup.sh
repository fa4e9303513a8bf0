#!/usr/bin/env bash
# Shared set-up for README's two commands: make sure a Vulkan adapter exists.
# A machine with a GPU driver (or lavapipe already installed) is left untouched; otherwise the
# software Vulkan driver is installed so that kiln runs on the CPU.
#
# On Debian 12 the driver comes from bookworm-backports (Mesa 25), whose lavapipe trains LeNet
# about twice as fast as Debian 12's own Mesa 22.3. Backports is Debian's opt-in channel: adding it
# takes nothing else from it. KILN_MESA=distro keeps Debian 12's Mesa. Where Mesa 22.3's lavapipe
# is already installed and no GPU is present, the script says so, and KILN_UPGRADE_MESA=1 upgrades
# it the same way.
set -euo pipefail

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
  exit 0
fi

echo "kiln setup: no Vulkan adapter found; installing the software Vulkan driver (${packages[*]})" >&2
install_driver
have_loader && have_icd || { echo "kiln setup: Vulkan driver still missing after install" >&2; exit 1; }
