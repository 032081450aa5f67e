#!/bin/bash
# Benchmark (run by hand): N instances (default 64) run `embark eip bind` at the same moment against one
# pool of N addresses. Reports distinct addresses, addresses held by more than one instance (must be 0),
# reassociations requested (must be 0), and the wall time of the whole scale-out.
#
#   bench/eip-fleet.sh [N]       (needs jq, curl, bc, and `make emulator-env static`)
set -euo pipefail

n=${1:-64}
here=$(cd "$(dirname "$0")/.." && pwd)
embark=${EMBARK_BIN:-$here/target/x86_64-unknown-linux-gnu/release/embark}
[ -x "$embark" ] || { echo "build the static binary first: make static" >&2; exit 2; }
# shellcheck source=scripts/emulator.sh
. "$here/scripts/emulator.sh"
work=$(mktemp -d)
start_emulator "$work"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_ENDPOINT_URL=$endpoint
export EMBARK_CONFIG=$work/empty.toml EMBARK_STATE_DIR=$work/state
: >"$work/empty.toml"   # a named config file must exist; empty: defaults plus the group's tags

control POST addresses "{\"pool\": \"fleet\", \"count\": $n}" >/dev/null
control POST launch "{\"count\": $n}" >"$work/instances.json"
start=$(date +%s.%N)
pids=()
i=0
for imds in $(jq -r '.[].imds_endpoint' "$work/instances.json"); do
    AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds "$embark" -q eip bind --pool fleet >"$work/out.$i" 2>&1 &
    pids+=($!)
    i=$((i + 1))
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
elapsed=$(echo "$(date +%s.%N) - $start" | bc)

control GET "addresses?pool=fleet" >"$work/pool.json"
bound=$(jq '[.[] | select(.instance_id != null)] | length' "$work/pool.json")
holders=$(jq '[.[] | select(.instance_id != null) | .instance_id] | unique | length' "$work/pool.json")
reassoc=$(control GET "requests?operation=AssociateAddress" | jq '[.[] | select(.params.AllowReassociation != "false")] | length')
attempts=$(control GET "requests?operation=AssociateAddress" | jq 'length')
echo "instances: $n, failed runs: $failed"
echo "addresses bound: $bound, distinct holders: $holders (an instance holding two would show as fewer)"
echo "AssociateAddress calls: $attempts ($((attempts - n)) lost races, retried on the next candidate); reassociation requested: $reassoc"
echo "wall time of the scale-out: ${elapsed}s"
