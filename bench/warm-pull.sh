#!/bin/bash
# Benchmark (run by hand, never in CI): every byte a warm pull fetches (pointer, manifest or manifest
# delta, objects), counted from the emulator's request log, for a 1%-changed release of a PHP-like tree
# (issue "Performance at fleet scale", item 1). Side by side on the same change:
#   - delta: the pointer as pushed, naming a manifest delta against the release the instance runs;
#   - whole: the same pointer without its `delta` (what a pull did before deltas: the whole manifest).
#
#   bench/warm-pull.sh [FILES]    (default 10000 files; needs jq, curl and `make emulator-env static`)
set -euo pipefail

files=${1:-10000}
here=$(cd "$(dirname "$0")/.." && pwd)
embark=${EMBARK_BIN:-$here/target/x86_64-unknown-linux-gnu/release/embark}
[ -x "$embark" ] || { echo "build the static binary first: make static" >&2; exit 2; }

# shellcheck source=scripts/emulator.sh
. "$here/scripts/emulator.sh"
work=$(mktemp -d)
start_emulator "$work"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=eu-west-1
export AWS_ENDPOINT_URL=$endpoint EMBARK_STATE_DIR=$work/state
control POST buckets '{"name": "bench-deploy"}' >/dev/null
python3 "$here/bench/gen-tree.py" "$work/tree" "$files"
"$embark" -q release push "$work/tree" --to s3://bench-deploy/app >/dev/null
imds=$(control POST launch '{"tags": {"embark:release": "s3://bench-deploy/app"}}' | jq -r '.[0].imds_endpoint')

pull() {  # pull into root $1
    printf '[release]\nroot = "%s"\n' "$1" >"$work/c.toml"
    AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds EMBARK_STATE_DIR=$1.state "$embark" -q --config "$work/c.toml" \
        release pull >/dev/null
}
gets() {  # bytes of every GET since the log was cleared, by kind
    curl -sf "$endpoint/_embark/requests?operation=GetObject" | jq -r '
        def kind: if (.path | test("/objects/")) then "objects"
                  elif (.path | endswith("/current")) then "pointer"
                  elif (.path | endswith("manifest.delta.zst")) then "delta"
                  elif (.path | endswith("manifest.json")) then "manifest"
                  elif (.path | test("/failed/")) then "failure-record" else .path end;
        group_by(kind) | map("\(.[0] | kind)=\(map(.bytes_out) | add)") | join(" ")'
}
total() { curl -sf "$endpoint/_embark/requests?operation=GetObject" | jq '[.[].bytes_out] | add // 0'; }

pull "$work/a"; pull "$work/b"   # two instances on the first release
changed=0
while IFS= read -r f; do
    head -c 2000 /dev/urandom >>"$f"; changed=$((changed + $(stat -c %s "$f")))
done < <(find "$work/tree" -type f | sort | awk 'NR % 100 == 0')
"$embark" -q release push "$work/tree" --to s3://bench-deploy/app >/dev/null

control DELETE requests >/dev/null
pull "$work/a"
delta_total=$(total); delta_parts=$(gets)

curl -sf "$endpoint/_embark/s3/bench-deploy/app/current" | jq 'del(.delta)' >"$work/pointer"
curl -sf -X PUT --data-binary @"$work/pointer" "$endpoint/_embark/s3/bench-deploy/app/current" >/dev/null
control DELETE requests >/dev/null
pull "$work/b"
whole_total=$(total); whole_parts=$(gets)

budget=$(echo "$changed * 1.1 + 65536" | bc)
cat <<OUT
files: $files; changed: $((files / 100)) files, $changed bytes
whole manifest (before): $whole_total bytes fetched ($whole_parts), $(echo "scale=3; $whole_total / $changed" | bc)x the changed bytes
manifest delta (now):    $delta_total bytes fetched ($delta_parts), $(echo "scale=3; $delta_total / $changed" | bc)x the changed bytes
goal: <= 1.1 x changed + 64 KiB = ${budget%.*} bytes: $( [ "$delta_total" -le "${budget%.*}" ] && echo met || echo NOT met)
OUT
