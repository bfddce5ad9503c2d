#!/usr/bin/env bash
# The local stack: real emulators of the AWS services tributary uses, on 127.0.0.1 only.
#
#   deploy/local/stack.sh install   install what is missing (npm kinesis-local, PyPI moto[server],
#                                   Debian postgresql and prometheus's promtool, and the
#                                   operations tools of deploy/local/ops-tools.sh)
#   deploy/local/stack.sh up        start Kinesis and DynamoDB (+ Streams) in the background and
#                                   print the environment that points the AWS SDK at them
#   deploy/local/stack.sh down      stop what `up` started
#   deploy/local/stack.sh env       print that environment again
#   deploy/local/stack.sh test      install, then run the whole test suite (the tests start
#                                   their own emulators and PostgreSQL from what is installed)
#
# Kinesis: kinesis-local (kinesis-mock compiled to JavaScript), patched to listen on loopback.
# DynamoDB and DynamoDB Streams: moto's server. PostgreSQL: the tests run their own.
# Ports: TRIBUTARY_KINESIS_PORT (default 4567), TRIBUTARY_MOTO_PORT (default 4569).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STACK="${TRIBUTARY_STACK_DIR:-$ROOT/target/local-stack}"
KINESIS_VERSION="0.6.2"
KINESIS_PORT="${TRIBUTARY_KINESIS_PORT:-4567}"
MOTO_PORT="${TRIBUTARY_MOTO_PORT:-4569}"

log() { echo "stack: $*" >&2; }

install_postgres() {
  if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then return; fi
  log "installing postgresql (Debian)"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends postgresql
}

install_promtool() {
  if command -v promtool >/dev/null; then return; fi
  log "installing promtool (Debian prometheus; the server is not started)"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends prometheus
}

# Image, chart, dashboard and Prometheus tools (buildah, podman, helm, checkov, …).
ops_tools() {
  TRIBUTARY_STACK_DIR="$STACK" "$ROOT/deploy/local/ops-tools.sh" all
}

install_kinesis() {
  local dir="$STACK/kinesis"
  if [ -f "$dir/main.js" ] && [ "$(cat "$dir/version" 2>/dev/null)" = "$KINESIS_VERSION" ]; then return; fi
  command -v npm >/dev/null || { log "npm is needed for kinesis-local (apt-get install nodejs npm)"; exit 1; }
  log "installing kinesis-local $KINESIS_VERSION (npm)"
  mkdir -p "$dir/npm"
  (cd "$dir/npm" && npm install --silent --no-audit --no-fund "kinesis-local@$KINESIS_VERSION" >/dev/null)
  local src="$dir/npm/node_modules/kinesis-local"
  # The listen address is hard-coded to 0.0.0.0: bind loopback only, and fail if that changed.
  grep -q 'em("0\.0\.0\.0")' "$src/main.js" || { log "kinesis-local's listen address moved; cannot patch"; exit 1; }
  sed 's/em("0\.0\.0\.0")/em("127.0.0.1")/' "$src/main.js" > "$dir/main.js"
  cp "$src/server.json" "$dir/"
  echo "$KINESIS_VERSION" > "$dir/version"
}

install_moto() {
  local dir="$STACK/moto"
  if [ -x "$dir/bin/moto_server" ]; then return; fi
  log "installing moto[server] (PyPI)"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "moto[server]>=5.1,<6"
}

env_lines() {
  cat <<ENV
export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:$KINESIS_PORT
export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$MOTO_PORT
export AWS_ENDPOINT_URL_DYNAMODB_STREAMS=http://127.0.0.1:$MOTO_PORT
export AWS_REGION=\${AWS_REGION:-us-east-1}
export AWS_ACCESS_KEY_ID=\${AWS_ACCESS_KEY_ID:-local}
export AWS_SECRET_ACCESS_KEY=\${AWS_SECRET_ACCESS_KEY:-local}
ENV
}

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "nothing listens on 127.0.0.1:$1 after 10 s"; return 1
}

up() {
  install_kinesis; install_moto
  mkdir -p "$STACK/run"
  (cd "$STACK/kinesis" && exec env KINESIS_MOCK_PLAIN_PORT="$KINESIS_PORT" KINESIS_MOCK_TLS_PORT=$((KINESIS_PORT + 1)) \
    CREATE_STREAM_DURATION=0ms DELETE_STREAM_DURATION=0ms SPLIT_SHARD_DURATION=0ms MERGE_SHARDS_DURATION=0ms \
    UPDATE_SHARD_COUNT_DURATION=0ms SHARD_LIMIT=1000 LOG_LEVEL=WARN node main.js) \
    < /dev/null > "$STACK/run/kinesis.log" 2>&1 &
  echo $! > "$STACK/run/kinesis.pid"
  "$STACK/moto/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" < /dev/null > "$STACK/run/moto.log" 2>&1 &
  echo $! > "$STACK/run/moto.pid"
  wait_port "$KINESIS_PORT"; wait_port "$MOTO_PORT"
  log "kinesis on 127.0.0.1:$KINESIS_PORT, dynamodb on 127.0.0.1:$MOTO_PORT (logs in $STACK/run)"
  env_lines
}

stop_pid() {
  local file="$1"
  [ -f "$file" ] || return 0
  local pid; pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

down() {
  stop_pid "$STACK/run/kinesis.pid"
  stop_pid "$STACK/run/moto.pid"
  log "stopped"
}

case "${1:-}" in
  install) install_postgres; install_promtool; install_kinesis; install_moto; ops_tools; log "installed under $STACK" ;;
  up) up ;;
  down) down ;;
  env) env_lines ;;
  test) install_postgres; install_promtool; install_kinesis; install_moto; ops_tools; cd "$ROOT" && TRIBUTARY_STACK_DIR="$STACK" cargo test --workspace ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
