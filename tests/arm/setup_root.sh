#!/usr/bin/env bash
# An aarch64 Debian root for qemu user mode, with the device runtime's wheels.
#   setup_root.sh [REQUIREMENTS] [SITE]
# SUITE=bookworm (Python 3.11) or bullseye (Python 3.9) picks the Debian release; the
# wheels pinned in REQUIREMENTS (default: the bundle's, from requirements.txt) are
# installed for that Python into $ROOT/opt/SITE, as `pip install -r` on the device would
# (lines with a platform_machine marker count only when it names aarch64).
# Packages are unpacked (debootstrap --foreign, then dpkg-deb -x), never configured, so
# neither binfmt_misc nor chroot is needed. Idempotent: a finished root is reused.
set -euo pipefail
ARM_DIR=${ARM_DIR:-.arm}
SUITE=${SUITE:-bookworm}
case "$SUITE" in
  bookworm) PY=3.11; ROOT="$ARM_DIR/root" ;;
  bullseye) PY=3.9; ROOT="$ARM_DIR/root-bullseye" ;;
  *) echo "SUITE must be bookworm or bullseye" >&2; exit 2 ;;
esac
REQS=${1:-}
SITE=${2:-site}
MIRROR=http://deb.debian.org/debian
PLATFORMS=(--platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64
           --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64)
if [ -n "$REQS" ]; then
  mapfile -t WHEELS < <(grep -v '^\s*#' "$REQS" | grep '==' |
    grep -v 'platform_machine *== *"\(x86_64\|armv7l\)"' | sed 's/ *;.*//')
else  # the bundle's requirements.txt: the same versions as the pipeline's
  pin() { grep -i "^$1==" requirements.txt; }
  WHEELS=("$(pin ai-edge-litert)" "$(pin numpy)" "$(pin pillow)")
fi

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  echo "Installing qemu-user-static and debootstrap (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    qemu-user-static debootstrap >/dev/null
fi

if [ ! -f "$ROOT/.unpacked" ]; then
  rm -rf "$ROOT" && mkdir -p "$ROOT"
  echo "debootstrap --foreign arm64 $SUITE into $ROOT"
  debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 \
    "$SUITE" "$ROOT" "$MIRROR" >"$ARM_DIR/debootstrap-$SUITE.log" 2>&1 \
    || { tail -20 "$ARM_DIR/debootstrap-$SUITE.log"; exit 1; }
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
  touch "$ROOT/.unpacked"
fi

TARGET="$ROOT/opt/$SITE"
if [ ! -f "$TARGET/.installed" ] || ! cmp -s <(printf '%s\n' "${WHEELS[@]}") "$TARGET/.installed"; then
  echo "aarch64 wheels for Python $PY: ${WHEELS[*]}"
  WHEEL_DIR="$ARM_DIR/wheels-$SUITE-$SITE"
  rm -rf "$TARGET" "$WHEEL_DIR"
  pip download --quiet --no-deps --only-binary=:all: "${PLATFORMS[@]}" --python-version "$PY" \
    --implementation cp -d "$WHEEL_DIR" "${WHEELS[@]}"
  pip install --quiet --no-deps --no-index --target "$TARGET" "${PLATFORMS[@]}" \
    --python-version "$PY" --implementation cp --only-binary=:all: "$WHEEL_DIR"/*.whl
  printf '%s\n' "${WHEELS[@]}" > "$TARGET/.installed"
fi
echo "aarch64 $SUITE root ready: $ROOT (wheels in /opt/$SITE)"
