#!/usr/bin/env bash
# Run a Python script on the aarch64 root under qemu user mode, as a 2-core Cortex-A72
# (the Raspberry Pi 4's CPU: no int8 dot product).
# Paths that exist in the root resolve there (qemu -L); others, like the project, resolve
# on the host. LiteRT's cpuinfo reads the CPU list from /sys and /proc/cpuinfo, which
# under qemu user mode describe the x86 host (it crashes on them, and without a CPU list
# XNNPACK does not start at all). A private mount namespace shows it a 2-core Cortex-A72
# instead: the sysfs CPU list and tests/arm/cpuinfo-cortex-a72.
# SUITE=bullseye runs Debian Bullseye's Python 3.9; SITE names the wheels (setup_root.sh).
set -euo pipefail
case "${SUITE:-bookworm}" in
  bookworm) ROOT=$(realpath "${ARM_DIR:-.arm}/root"); PYTHON=python3.11 ;;
  bullseye) ROOT=$(realpath "${ARM_DIR:-.arm}/root-bullseye"); PYTHON=python3.9 ;;
esac
SITE=${SITE:-site}
CPUINFO=$(realpath "$(dirname "$0")/cpuinfo-cortex-a72")
exec unshare -m sh -c '
  mount -t tmpfs none /sys/devices/system/cpu
  for f in possible present online; do echo 0-1 > /sys/devices/system/cpu/$f; done
  mount --bind "$0" /proc/cpuinfo
  shift
  exec "$@"' "$CPUINFO" sh \
  env PYTHONPATH="/opt/$SITE:$PWD" qemu-aarch64-static -cpu cortex-a72 -L "$ROOT" \
  "$ROOT/usr/bin/$PYTHON" "$@"
