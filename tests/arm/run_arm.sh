#!/usr/bin/env bash
# Run a Python script on the aarch64 root under qemu user mode.
# Paths that exist in the root resolve there (qemu -L); others, like the project, resolve
# on the host. LiteRT's cpuinfo crashes on the host's CPU list under qemu, so a private
# mount namespace hides it behind an empty tmpfs.
set -euo pipefail
ROOT=$(realpath "${ARM_DIR:-.arm}/root")
exec unshare -m sh -c 'mount -t tmpfs none /sys/devices/system/cpu && exec "$@"' sh \
  env PYTHONPATH="/opt/site:$PWD" qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" "$@"
