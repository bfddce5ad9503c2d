#!/usr/bin/env bash
# A local stand-in for the image's base (gcr.io/distroless/cc-debian12:nonroot), for machines
# that cannot pull it: built `from scratch` with only what a dynamically linked tributary needs.
#
#   deploy/docker/standin-base.sh [--binary PATH] [--tag REF]
#
#   --binary  the binary whose shared libraries (ldd) go in (default target/release/tributary)
#   --tag     the reference to tag it as (default localhost/tributary-base:standin)
#
# What goes in, as in the distroless base: the shared libraries and the dynamic loader at the
# paths ldd names (taken from this machine, so they match the binary), the CA bundle at
# /etc/ssl/certs/ca-certificates.crt (SSL_CERT_FILE points at it), /etc/passwd and /etc/group with
# root, nobody and nonroot (65532), /tmp (1777) and /home/nonroot (65532, the working
# directory); user 65532:65532. No shell, no package manager. Stored where containers.sh says.
# Prints the image reference on its last line.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=containers.sh
. "$ROOT/deploy/docker/containers.sh"

BINARY="${CARGO_TARGET_DIR:-$ROOT/target}/release/tributary"
TAG="localhost/tributary-base:standin"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BINARY="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done

log() { echo "standin-base: $*" >&2; }
# Mounting a container and handing a folder to uid 65532 take root (the tests and CI run as root).
[ "$(id -u)" -eq 0 ] || { log "run as root (it mounts the image being built and chowns /home/nonroot)"; exit 1; }
command -v buildah >/dev/null || { log "buildah is not installed (deploy/local/ops-tools.sh debian)"; exit 1; }
[ -x "$BINARY" ] || { log "no binary at $BINARY (cargo build --release, or pass --binary)"; exit 1; }
CA=/etc/ssl/certs/ca-certificates.crt
[ -s "$CA" ] || { log "no CA bundle at $CA (apt-get install ca-certificates)"; exit 1; }

STAGE="$(mktemp -d)"
CTR=""
cleanup() {
  [ -n "$CTR" ] && buildah "${STORAGE[@]}" rm "$CTR" >/dev/null 2>&1 || true
  rm -rf "$STAGE"
}
trap cleanup EXIT

# The libraries and the loader, each at the path the binary looks for it (`cp -L`: the file,
# not the symlink chain).
LIBS="$(ldd "$BINARY" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)"
[ -n "$LIBS" ] || { log "ldd lists no shared library for $BINARY (a static binary needs no stand-in)"; exit 1; }
for lib in $LIBS; do
  mkdir -p "$STAGE/rootfs$(dirname "$lib")"
  cp -L "$lib" "$STAGE/rootfs$lib"
  log "+ $lib"
done

mkdir -p "$STAGE/rootfs/etc/ssl/certs" "$STAGE/rootfs/tmp" "$STAGE/rootfs/home/nonroot"
cp -L "$CA" "$STAGE/rootfs/etc/ssl/certs/ca-certificates.crt"
cat > "$STAGE/rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$STAGE/rootfs/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
chmod 0644 "$STAGE/rootfs/etc/passwd" "$STAGE/rootfs/etc/group" "$STAGE/rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 1777 "$STAGE/rootfs/tmp"
chmod 0700 "$STAGE/rootfs/home/nonroot"

chown -R 0:0 "$STAGE/rootfs"
chown 65532:65532 "$STAGE/rootfs/home/nonroot"

# Copied into the mounted container as it is (owners and modes kept: `buildah copy --chown`
# would leave /home/nonroot itself to root).
CTR="$(buildah "${STORAGE[@]}" from scratch)"
MNT="$(buildah "${STORAGE[@]}" mount "$CTR")"
cp -a "$STAGE/rootfs/." "$MNT/"
buildah "${STORAGE[@]}" umount "$CTR" >/dev/null
buildah "${STORAGE[@]}" config \
  --user 65532:65532 \
  --workingdir /home/nonroot \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --label org.opencontainers.image.title=tributary-base-standin \
  --label "org.opencontainers.image.description=local stand-in for gcr.io/distroless/cc-debian12:nonroot" \
  "$CTR"
PREVIOUS="$(buildah "${STORAGE[@]}" images --quiet --no-trunc "$TAG" 2>/dev/null || true)"
buildah "${STORAGE[@]}" commit --quiet --rm "$CTR" "$TAG" >/dev/null
CTR=""
# The image the tag named before, now nameless: removed (unless something still uses it).
if [ -n "$PREVIOUS" ] && [ "$PREVIOUS" != "$(buildah "${STORAGE[@]}" images --quiet --no-trunc "$TAG")" ]; then
  buildah "${STORAGE[@]}" rmi "$PREVIOUS" >/dev/null 2>&1 || true
fi
log "built $TAG in $CONTAINERS"
echo "$TAG"
