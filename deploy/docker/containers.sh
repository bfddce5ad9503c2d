# Sourced by the scripts of deploy/docker (not run): where buildah and podman keep this
# project's images and containers. Everything lives under the local stack,
# $TRIBUTARY_STACK_DIR/ops/containers (default target/local-stack/ops/containers), with the vfs
# driver (no overlay mounts, no fuse): nothing goes to /var/lib/containers or /run/containers,
# and removing that folder removes every image the scripts and tests built.
#
# Needs ROOT (the repository) set by the caller. Defines:
#   CONTAINERS  the folder
#   STORAGE     the storage flags buildah and podman both take (--root, --runroot, --storage-driver)
#   PODMAN      podman's global flags: STORAGE plus runc (crun fails on setrlimit on these
#               machines), cgroupfs (no systemd), its own tmp folder and a file for its events
#
# The run-time state (--runroot, --tmpdir) holds sockets, and podman refuses a runroot longer
# than 50 characters, so it cannot sit under a checkout whose path is long: it goes to a short
# folder under /tmp named by a hash of CONTAINERS (one per storage, stable across calls).
STACK="${TRIBUTARY_STACK_DIR:-$ROOT/target/local-stack}"
CONTAINERS="$STACK/ops/containers"
RUNTIME="/tmp/tributary-$(printf '%s' "$CONTAINERS" | sha256sum | cut -c1-12)"
STORAGE=(--root "$CONTAINERS/storage" --runroot "$RUNTIME/run" --storage-driver vfs)
PODMAN=("${STORAGE[@]}" --tmpdir "$RUNTIME/libpod" --runtime runc --cgroup-manager cgroupfs --events-backend file)
