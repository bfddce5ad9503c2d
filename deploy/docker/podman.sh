#!/usr/bin/env bash
# podman on the project's container storage (see containers.sh): the images build.sh and
# standin-base.sh made, and the containers run from them. Arguments go to podman as they are:
#
#   deploy/docker/podman.sh images
#   deploy/docker/podman.sh run --rm --read-only --cap-drop ALL localhost/tributary:0.1.0 --version
#
# The tests run podman through this script too, so all three agree on where things are.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=containers.sh
. "$ROOT/deploy/docker/containers.sh"
command -v podman >/dev/null || { echo "podman.sh: podman is not installed (deploy/local/ops-tools.sh debian)" >&2; exit 127; }
exec podman "${PODMAN[@]}" "$@"
