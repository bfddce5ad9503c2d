#!/usr/bin/env bash
# Mutation testing of the core with cargo-mutants (https://mutants.rs). Not part of CI: it takes
# hours on 2 cores. MUTANTS.md keeps the last run's figures and the reason each surviving mutant
# cannot change behaviour.
#
#   cargo install cargo-mutants --locked       # once
#   tests/mutants.sh decode                    # one group; `all` runs every group
#   tests/mutants.sh decode -- --re kpl        # extra cargo-mutants flags after `--`
#   tests/mutants.sh lease --units-only        # pass 1 only
#
# Each group runs in two passes over the same output folder (target/mutants/<group>):
#   1. every mutant against the unit and property tests of the crate it is in (minutes);
#   2. only the survivors of pass 1 (--iterate) against the integration tests that guard the
#      group's promise, on the local stack (each mutant relinks the tributary test binaries:
#      about two minutes each on 2 cores).
#
#   group     files                                          pass 2 adds
#   planner   coordinator/src/planner.rs                     (none: the planner is pure)
#   lease     proto/src/{lease,lease_protocol,checkpoint}.rs lease_table_conformance (in-memory and
#                                                            DynamoDB), timing, simulation (20 seeds)
#   decode    worker/src/{pipeline/decode,kpl}.rs            cdc_replay, byte_limits on PostgreSQL
#   merge     adapters/src/{merge_sql,commit_plan,sql_text,  warehouse_conformance, redshift_data
#             warehouse_ddl}.rs
#   limits    proto/src/row.rs                               byte_limits, worker and adapters units
#   consumer  worker/src/{shard_consumer,chunk_progress}.rs  node tests, simulation (20 seeds)
#             (the checkpoint path)
#
# Pass 1 leaves the tree as it found it; do not edit the checkout while a pass runs (--in-place
# mutates the files themselves and restores each one, also on ^C).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || { echo "mutants.sh: cargo install cargo-mutants --locked" >&2; exit 127; }

group="${1:-}"
shift || true
deep=1
[[ "${1:-}" == "--units-only" ]] && { deep=0; shift; }
[[ "${1:-}" == "--" ]] && shift
export TRIBUTARY_SIM_SEEDS="${TRIBUTARY_SIM_SEEDS:-20}"
# A mutant's failing proptest case is no regression of the real code: keep it out of the tree.
export PROPTEST_DISABLE_FAILURE_PERSISTENCE=1

counts() {
  local out="target/mutants/$1/mutants.out" figures=()
  for kind in caught missed timeout unviable; do
    figures+=("$kind $(cat "$out/$kind.txt" 2>/dev/null | wc -l)")
  done
  (IFS=,; echo "$1 ($2): ${figures[*]}")
}

# group, its files (-f …) and extra flags, then `--` and the pass-2 packages and test targets.
run() {
  local name="$1" files=() deep_packages="" deep_tests=()
  shift
  while [[ $# -gt 0 && "$1" != "--" ]]; do files+=("$1"); shift; done
  [[ "${1:-}" == "--" ]] && shift
  deep_packages="${1:-}"
  [[ $# -gt 0 ]] && shift
  deep_tests=("$@")
  mkdir -p "target/mutants/$name"
  local common=(--workspace --in-place --no-shuffle --timeout-multiplier 3 --output "target/mutants/$name")
  echo "== mutants: $name, pass 1 (unit tests of each mutated crate)"
  cargo mutants "${common[@]}" "${files[@]}" "${extra[@]}" || true
  counts "$name" "pass 1"
  if [[ "$deep" == 1 && -n "$deep_packages" && -s "target/mutants/$name/mutants.out/missed.txt" ]]; then
    echo "== mutants: $name, pass 2 (the survivors against ${deep_tests[*]})"
    # The baseline is skipped: pass 1's baseline ran, and these targets pass on main.
    cargo mutants "${common[@]}" "${files[@]}" "${extra[@]}" --iterate --baseline skip \
      --test-package "$deep_packages" -- "${deep_tests[@]}" || true
    counts "$name" "pass 2, survivors of pass 1 only"
  fi
}

extra=("$@")
planner() { run planner -f coordinator/src/planner.rs; }
lease() {
  run lease -f proto/src/lease.rs -f proto/src/lease_protocol.rs -f proto/src/checkpoint.rs \
    -- proto,tributary --lib --test lease_table_conformance --test timing --test simulation
}
decode() {
  run decode -f worker/src/pipeline/decode.rs -f worker/src/kpl.rs -- worker,tributary --lib --test cdc_replay --test byte_limits
}
merge() {
  run merge -f adapters/src/merge_sql.rs -f adapters/src/commit_plan.rs -f adapters/src/sql_text.rs \
    -f adapters/src/warehouse_ddl.rs -- adapters,tributary --lib --test warehouse_conformance --test redshift_data
}
limits() {
  run limits -f proto/src/row.rs -- proto,worker,adapters,tributary --lib --test byte_limits
}
consumer() {
  # The checkpoint path: what is acknowledged, when a checkpoint is written, how a shard ends.
  run consumer -f worker/src/shard_consumer.rs -f worker/src/chunk_progress.rs \
    --re 'done_upto|checkpoint|advance|acked|push|maybe_finish|create_children|hand_on' \
    -- worker,tributary --lib --test node --test simulation
}

case "$group" in
  planner | lease | decode | merge | limits | consumer) "$group" ;;
  all) for g in planner decode limits merge lease consumer; do "$g"; done ;;
  *) echo "usage: tests/mutants.sh planner|lease|decode|merge|limits|consumer|all [-- cargo-mutants flags]" >&2; exit 2 ;;
esac
