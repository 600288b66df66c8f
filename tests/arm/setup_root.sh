#!/usr/bin/env bash
# An aarch64 Debian root for qemu user mode, with the device runtime's wheels.
# Packages are unpacked (debootstrap --foreign, then dpkg-deb -x), never configured, so
# neither binfmt_misc nor chroot is needed. Idempotent: a finished root is reused.
set -euo pipefail
ARM_DIR=${ARM_DIR:-.arm}
ROOT="$ARM_DIR/root"
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
PLATFORMS=(--platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64
           --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64)
# The device needs only these; same versions as requirements.txt.
pin() { grep -i "^$1==" requirements.txt; }
WHEELS=("$(pin ai-edge-litert)" "$(pin numpy)" "$(pin pillow)")

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  echo "Installing qemu-user-static and debootstrap (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    qemu-user-static debootstrap >/dev/null
fi

if [ ! -f "$ROOT/.unpacked" ]; then
  rm -rf "$ROOT" && mkdir -p "$ROOT"
  echo "debootstrap --foreign arm64 $SUITE into $ROOT"
  debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 \
    "$SUITE" "$ROOT" "$MIRROR" >"$ARM_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$ARM_DIR/debootstrap.log"; exit 1; }
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
  touch "$ROOT/.unpacked"
fi

if [ ! -f "$ROOT/opt/site/.installed" ] || ! cmp -s <(printf '%s\n' "${WHEELS[@]}") "$ROOT/opt/site/.installed"; then
  echo "aarch64 wheels: ${WHEELS[*]}"
  rm -rf "$ROOT/opt/site" "$ARM_DIR/wheels"
  pip download --quiet --only-binary=:all: "${PLATFORMS[@]}" --python-version 3.11 \
    --implementation cp -d "$ARM_DIR/wheels" "${WHEELS[@]}"
  pip install --quiet --no-deps --no-index --target "$ROOT/opt/site" "${PLATFORMS[@]}" \
    --python-version 3.11 --implementation cp --only-binary=:all: "$ARM_DIR"/wheels/*.whl
  printf '%s\n' "${WHEELS[@]}" > "$ROOT/opt/site/.installed"
fi
echo "aarch64 root ready: $ROOT"
