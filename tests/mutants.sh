#!/usr/bin/env bash
# Mutation testing of the core with cargo-mutants (https://mutants.rs): each group mutates the
# files that keep one promise and runs only the tests that guard it, so a group fits in minutes
# to an hour on 2 cores. Not part of CI. Results go to target/mutants/<group>/mutants.out
# (caught.txt, missed.txt, timeout.txt, unviable.txt); MUTANTS.md keeps the last run's figures
# and the reason each surviving mutant cannot change behaviour.
#
#   cargo install cargo-mutants --locked      # once
#   tests/mutants.sh planner                  # one group; `tests/mutants.sh all` runs every one
#   tests/mutants.sh lease -- --re holds_for  # extra cargo-mutants flags after `--`
#
# The groups:
#   planner   coordinator/src/planner.rs                     coordinator's unit and property tests
#   lease     proto/src/{lease,lease_protocol,checkpoint}.rs  proto units, lease table conformance
#                                                             (in-memory and DynamoDB), timing, a
#                                                             20-seed simulation
#   decode    worker/src/{decode,kpl}.rs                     worker units, cdc_replay on PostgreSQL
#   merge     adapters/src/merge_sql.rs                      adapters units, warehouse conformance
#                                                             and the Data API tests on PostgreSQL
#   limits    proto/src/row.rs                               units of every crate, byte_limits
#   consumer  worker/src/shard_consumer.rs (checkpoint path)  worker units and node tests, a
#                                                             20-seed simulation
#
# The tests that need the local stack start it themselves (deploy/local/stack.sh install first).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || { echo "mutants.sh: cargo install cargo-mutants --locked" >&2; exit 127; }

group="${1:-}"
shift || true
[[ "${1:-}" == "--" ]] && shift
export TRIBUTARY_SIM_SEEDS="${TRIBUTARY_SIM_SEEDS:-20}"

run() {
  local name="$1"
  shift
  echo "== mutants: $name"
  mkdir -p "target/mutants/$name"
  # --in-place: the checkout's own target/ is reused, so only what a mutant touches rebuilds.
  # Leave the tree alone while it runs: the mutated file is restored at the end (or on ^C).
  cargo mutants --workspace --in-place --no-shuffle --timeout-multiplier 3 \
    --output "target/mutants/$name" "$@" || true
  local out="target/mutants/$name/mutants.out" counts=()
  for kind in caught missed timeout unviable; do
    counts+=("$kind $(cat "$out/$kind.txt" 2>/dev/null | wc -l)")
  done
  (IFS=,; echo "$name: ${counts[*]}")
}

planner() {
  run planner -f coordinator/src/planner.rs --test-package coordinator "$@" -- --lib
}
lease() {
  run lease -f proto/src/lease.rs -f proto/src/lease_protocol.rs -f proto/src/checkpoint.rs \
    --test-package proto --test-package tributary "$@" \
    -- --lib --test lease_table_conformance --test timing --test simulation
}
decode() {
  run decode -f worker/src/decode.rs -f worker/src/kpl.rs --test-package worker --test-package tributary "$@" \
    -- --lib --test cdc_replay
}
merge() {
  run merge -f adapters/src/merge_sql.rs --test-package adapters --test-package tributary "$@" \
    -- --lib --test warehouse_conformance --test redshift_data
}
limits() {
  run limits -f proto/src/row.rs --test-package proto --test-package worker --test-package adapters \
    --test-package tributary "$@" -- --lib --test byte_limits
}
consumer() {
  # The checkpoint path: what is acknowledged, when a checkpoint is written, how a shard ends.
  run consumer -f worker/src/shard_consumer.rs \
    --re 'done_upto|checkpoint|advance|maybe_finish|create_children|hand_on' \
    --test-package worker --test-package tributary "$@" -- --lib --test node --test simulation
}

case "$group" in
  planner | lease | decode | merge | limits | consumer) "$group" "$@" ;;
  all) for g in planner decode limits merge lease consumer; do "$g" "$@"; done ;;
  *) echo "usage: tests/mutants.sh planner|lease|decode|merge|limits|consumer|all [-- cargo-mutants flags]" >&2; exit 2 ;;
esac
