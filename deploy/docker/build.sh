#!/usr/bin/env bash
# Builds tributary's container image (deploy/docker/Dockerfile) with buildah, offline.
#
#   deploy/docker/build.sh [--base IMAGE] [--binary PATH] [--tag REF] [--pull POLICY] [--keep-debug]
#
#   --base    the base image (default: the Dockerfile's, gcr.io/distroless/cc-debian12:nonroot);
#             it must already be in the storage unless --pull allows pulling. Without a
#             registry: --base "$(deploy/docker/standin-base.sh --binary PATH | tail -n1)"
#   --binary  package this binary instead of building one; by default
#             `cargo build --release --locked` and target/release/tributary
#   --tag     the image reference (default localhost/tributary:<the binary's --version>)
#   --pull    buildah's pull policy for the base (default never: no registry is asked)
#   --keep-debug  package the binary as it is; by default a copy without debug sections
#             (`strip --strip-debug`) goes in: the release binary carries line tables and its C
#             dependencies' DWARF, about 80% of its size (176 MB → 33 MB); function names stay
#             in backtraces, file:line go
#
# The binary is the only file of the build context (a temporary folder), so the image gets
# nothing else of the checkout. Images go where containers.sh says (vfs, under the local stack);
# run them with deploy/docker/podman.sh. Prints the image reference on its last line.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=containers.sh
. "$ROOT/deploy/docker/containers.sh"

BASE=""
BINARY=""
TAG=""
PULL=never
STRIP=1
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE="$2"; shift 2 ;;
    --binary) BINARY="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --pull) PULL="$2"; shift 2 ;;
    --keep-debug) STRIP=""; shift ;;
    *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done

log() { echo "build: $*" >&2; }
command -v buildah >/dev/null || { log "buildah is not installed (deploy/local/ops-tools.sh debian)"; exit 1; }

if [ -z "$BINARY" ]; then
  log "cargo build --release --locked"
  (cd "$ROOT" && cargo build --release --locked --bin tributary >&2)
  BINARY="${CARGO_TARGET_DIR:-$ROOT/target}/release/tributary"
fi
[ -x "$BINARY" ] || { log "no binary at $BINARY"; exit 1; }
# The version the binary reports (`tributary 0.1.0`) names and labels the image.
VERSION="$("$BINARY" --version | awk '{ print $2 }')"
[ -n "$VERSION" ] || { log "$BINARY --version printed no version"; exit 1; }
TAG="${TAG:-localhost/tributary:$VERSION}"
REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$REVISION" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  REVISION="$REVISION-dirty"
fi

if [ -n "$BASE" ] && [ "$PULL" = never ] && ! buildah "${STORAGE[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  log "the base $BASE is not in $CONTAINERS: build a stand-in (deploy/docker/standin-base.sh) or pass --pull missing where a registry is reachable"
  exit 1
fi

CONTEXT="$(mktemp -d)"
trap 'rm -rf "$CONTEXT"' EXIT
if [ -n "$STRIP" ]; then
  command -v strip >/dev/null || { log "stripping needs strip (apt-get install binutils), or pass --keep-debug"; exit 1; }
  strip --strip-debug -o "$CONTEXT/tributary" "$BINARY"
else
  # A hard link when the binary is on the same file system (no copy of a few hundred MB).
  ln "$BINARY" "$CONTEXT/tributary" 2>/dev/null || cp "$BINARY" "$CONTEXT/tributary"
fi

ARGS=(--build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION"
  --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
[ -n "$BASE" ] && ARGS+=(--build-arg "BASE=$BASE")
PREVIOUS="$(buildah "${STORAGE[@]}" images --quiet --no-trunc "$TAG" 2>/dev/null || true)"
log "building $TAG from $BINARY (base: ${BASE:-the default})"
buildah "${STORAGE[@]}" bud --isolation chroot --pull="$PULL" --quiet "${ARGS[@]}" \
  -t "$TAG" -f "$ROOT/deploy/docker/Dockerfile" "$CONTEXT" >&2
# The image the tag named before, now nameless: removed (unless something still uses it).
if [ -n "$PREVIOUS" ] && [ "$PREVIOUS" != "$(buildah "${STORAGE[@]}" images --quiet --no-trunc "$TAG")" ]; then
  buildah "${STORAGE[@]}" rmi "$PREVIOUS" >/dev/null 2>&1 || true
fi
echo "$TAG"
