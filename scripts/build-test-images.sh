#!/usr/bin/env bash
# Build the small local images the demo and the tests use (no registry is needed):
#   orchestrator-test/busybox:latest   FROM scratch, one statically linked busybox
# DOCKER_HOST selects the engine, so the same script serves a second Docker host.
#
# The image holds no dynamic loader and no libraries, so its busybox must be static. Debian's
# `busybox` package (which initramfs-tools pulls in) is dynamically linked: then the static
# one is taken from the `busybox-static` package, downloaded and unpacked in a temporary
# directory (`apt-get download` + `dpkg-deb -x`), which installs nothing on this machine.
# Idempotent: an image that exists and runs is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=orchestrator-test/busybox:latest
log() { printf '[setup] %s\n' "$*"; }

# Kept when it runs: an image built from a dynamic busybox by an older setup does not.
if docker image inspect "$IMAGE" >/dev/null 2>&1 \
   && docker run --rm --network none "$IMAGE" true >/dev/null 2>&1; then
  exit 0
fi

# True when the ELF file $1 asks for no program interpreter (no PT_INTERP program header), so
# runs without a dynamic loader. python3, not `file` or `readelf`, which may be missing.
is_static() {
  python3 - "$1" <<'EOF'
import struct
import sys

with open(sys.argv[1], "rb") as f:
    head = f.read(64)
    if len(head) < 52 or head[:4] != b"\x7fELF":
        sys.exit(1)
    order = "<" if head[5] == 1 else ">"
    if head[4] == 2:  # 64-bit
        (offset,) = struct.unpack_from(order + "Q", head, 32)
        size, count = struct.unpack_from(order + "HH", head, 54)
    else:
        (offset,) = struct.unpack_from(order + "I", head, 28)
        size, count = struct.unpack_from(order + "HH", head, 42)
    f.seek(offset)
    table = f.read(size * count)
PT_INTERP = 3
kinds = {struct.unpack_from(order + "I", table, i * size)[0] for i in range(count)}
sys.exit(1 if PT_INTERP in kinds else 0)
EOF
}

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

busybox_bin=
for candidate in /bin/busybox /usr/bin/busybox "$(command -v busybox || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && is_static "$candidate"; then
    busybox_bin=$candidate
    break
  fi
done
if [ -z "$busybox_bin" ]; then
  log "no statically linked busybox here: unpacking the busybox-static package (not installing it)"
  mkdir "$ctx/deb"
  chmod 755 "$ctx" && chown _apt "$ctx/deb" 2>/dev/null || true  # apt downloads as _apt
  download() { (cd "$ctx/deb" && apt-get download -q busybox-static 2>&1); }
  if ! out=$(download); then
    # No package lists yet (a fresh machine) or stale ones.
    apt-get update -qq
    out=$(download) || { printf '%s\n' "$out" >&2; log "apt-get download busybox-static failed"; exit 1; }
  fi
  dpkg-deb -x "$ctx"/deb/busybox-static_*.deb "$ctx/root"
  for candidate in "$ctx"/root/bin/busybox "$ctx"/root/usr/bin/busybox; do
    [ -x "$candidate" ] && busybox_bin=$candidate && break
  done
  [ -n "$busybox_bin" ] && is_static "$busybox_bin" \
    || { log "the busybox-static package holds no static busybox"; exit 1; }
fi

mkdir "$ctx/image"
cp "$busybox_bin" "$ctx/image/busybox"
cp tests/images/busybox/Dockerfile "$ctx/image/Dockerfile"
# No network: the build needs none (and an engine in a container, without --privileged, may
# be unable to set up a RUN step's interface: Docker 24+ wants to write IPv6 sysctls).
# The legacy builder's deprecation notice goes to stderr: shown only when the build fails.
if ! out=$(docker build -q --network none -t "$IMAGE" "$ctx/image" 2>&1); then
  printf '%s\n' "$out" >&2
  log "building $IMAGE failed"
  exit 1
fi
log "built $IMAGE"
