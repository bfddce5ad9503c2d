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
STACK="${TRIBUTARY_STACK_DIR:-$ROOT/target/local-stack}"
CONTAINERS="$STACK/ops/containers"
STORAGE=(--root "$CONTAINERS/storage" --runroot "$CONTAINERS/run" --storage-driver vfs)
PODMAN=("${STORAGE[@]}" --tmpdir "$CONTAINERS/libpod" --runtime runc --cgroup-manager cgroupfs --events-backend file)
