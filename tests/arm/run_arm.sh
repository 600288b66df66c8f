#!/usr/bin/env bash
# Run a Python script on the aarch64 root under qemu user mode, as a 2-core Cortex-A72
# (the Raspberry Pi 4's CPU: no int8 dot product).
# Paths that exist in the root resolve there (qemu -L); others, like the project, resolve
# on the host. LiteRT's cpuinfo reads the CPU list from /sys and /proc/cpuinfo, which
# under qemu user mode describe the x86 host (it crashes on them, and without a CPU list
# XNNPACK does not start at all). A private mount namespace shows it a 2-core Cortex-A72
# instead: the sysfs CPU list and tests/arm/cpuinfo-cortex-a72.
# SUITE=bullseye runs Debian Bullseye's Python 3.9; SITE names the wheels (setup_root.sh).
# QEMU_CPU=cortex-a76 shows a Cortex-A76 (the Pi 5's, with int8 dot product) instead;
# QEMU=qemu-aarch64 QEMU_PLUGIN=<plugin.so,args> runs Debian's dynamic qemu-user, which
# loads TCG plugins (the static build cannot): benchmarks/arm_cost.py counts instructions.
set -euo pipefail
case "${SUITE:-bookworm}" in
  bookworm) ROOT=$(realpath "${ARM_DIR:-.arm}/root"); PYTHON=python3.11 ;;
  bullseye) ROOT=$(realpath "${ARM_DIR:-.arm}/root-bullseye"); PYTHON=python3.9 ;;
esac
SITE=${SITE:-site}
QEMU_CPU=${QEMU_CPU:-cortex-a72}
CPUINFO=$(realpath "$(dirname "$0")/cpuinfo-$QEMU_CPU")
exec unshare -m sh -c '
  mount -t tmpfs none /sys/devices/system/cpu
  for f in possible present online; do echo 0-1 > /sys/devices/system/cpu/$f; done
  mount --bind "$0" /proc/cpuinfo
  shift
  exec "$@"' "$CPUINFO" sh \
  env PYTHONPATH="/opt/$SITE:$PWD" "${QEMU:-qemu-aarch64-static}" -cpu "$QEMU_CPU" \
  ${QEMU_PLUGIN:+-plugin "$QEMU_PLUGIN"} -L "$ROOT" "$ROOT/usr/bin/$PYTHON" "$@"
