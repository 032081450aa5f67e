#!/bin/bash
# Benchmark (run by hand, never in CI): two embark binaries side by side on the same release, rounds
# alternating between them so that the machine's noise falls on both alike:
#   - a cold `release pull` (the bundle, every file verified, staged, switched),
#   - a warm `release pull` of a release with 1% of the files changed (objects + local copies),
# each into a fresh root. Prints the medians and the ratio NEW / OLD. For a restructuring that must
# not change behaviour: the ratios should be 1 within noise.
#
#   bench/compare-pull.sh OLD NEW [ROUNDS] [FILES]   (default 5 rounds, 10000 files; needs jq, curl,
#                                                    bc and `make emulator-env`)
set -euo pipefail

old=${1:?the old binary}; new=${2:?the new binary}
rounds=${3:-5}
files=${4:-10000}
here=$(cd "$(dirname "$0")/.." && pwd)

# shellcheck source=scripts/emulator.sh
. "$here/scripts/emulator.sh"
work=$(mktemp -d)
start_emulator "$work"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=eu-west-1
export AWS_ENDPOINT_URL=$endpoint EMBARK_STATE_DIR=$work/state
control POST buckets '{"name": "bench-deploy"}' >/dev/null
python3 "$here/bench/gen-tree.py" "$work/tree" "$files"
"$new" -q release push "$work/tree" --to s3://bench-deploy/app >/dev/null
v1=$(curl -sf "$endpoint/_embark/s3/bench-deploy/app/current" | jq -r .release)
while IFS= read -r f; do head -c 2000 /dev/urandom >>"$f"; done \
    < <(find "$work/tree" -type f | sort | awk 'NR % 100 == 0')
"$new" -q release push "$work/tree" --to s3://bench-deploy/app >/dev/null
v2=$(curl -sf "$endpoint/_embark/s3/bench-deploy/app/current" | jq -r .release)
imds=$(control POST launch '{"tags": {"embark:release": "s3://bench-deploy/app"}}' | jq -r '.[0].imds_endpoint')

now() { date +%s.%N; }
point() {  # the pointer at release $1 whose manifest has sha256 $2 (the bench moves it itself)
    jq --arg id "$1" --arg sha "$2" '.release = $id | .manifest_sha256 = $sha | del(.delta)' \
        "$work/pointer.json" >"$work/p.json"
    curl -sf -X PUT --data-binary @"$work/p.json" "$endpoint/_embark/s3/bench-deploy/app/current" >/dev/null
}
sha_of() { curl -sf "$endpoint/_embark/s3/bench-deploy/app/releases/$1/manifest.json" | sha256sum | cut -d' ' -f1; }
curl -sf "$endpoint/_embark/s3/bench-deploy/app/current" >"$work/pointer.json"
sha1=$(sha_of "$v1"); sha2=$(sha_of "$v2")
pull() {  # binary, root
    printf '[release]\nroot = "%s"\n' "$2" >"$work/c.toml"
    AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds EMBARK_STATE_DIR=$2.state "$1" -q --config "$work/c.toml" \
        release pull >/dev/null
}
for way in old new; do : >"$work/cold-$way"; : >"$work/warm-$way"; done
for i in $(seq 1 "$rounds"); do
    for way in old new; do
        bin=$old; [ "$way" = new ] && bin=$new
        root=$work/root-$way-$i
        point "$v1" "$sha1"
        sync; start=$(now); pull "$bin" "$root"; echo "$(now) - $start" | bc >>"$work/cold-$way"
        point "$v2" "$sha2"
        sync; start=$(now); pull "$bin" "$root"; echo "$(now) - $start" | bc >>"$work/warm-$way"
        rm -rf "$root" "$root.state"
    done
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
co=$(median "$work/cold-old"); cn=$(median "$work/cold-new")
wo=$(median "$work/warm-old"); wn=$(median "$work/warm-new")
cat <<OUT
files: $files, rounds: $rounds (alternating old, new)
cold pull: old ${co}s, new ${cn}s, new/old $(echo "scale=2; $cn / $co" | bc)
warm pull (1% changed): old ${wo}s, new ${wn}s, new/old $(echo "scale=2; $wn / $wo" | bc)
OUT
