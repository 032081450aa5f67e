#!/bin/bash
# Benchmark (run by hand, never in CI): fetching a release of a PHP-like tree (10,000 files, ~100 MB,
# vendor-like sizes) from the emulator's S3, alternating runs of
#   - a cold `embark release pull` (streams the bundle, verifies every file),
#   - `aws s3 sync` of the same files (what the classic scripts do),
#   - one GET of the bundle piped through `zstd -d | tar x` (the practical floor);
# then an incremental pull after changing 1% of the files (bytes fetched vs bytes changed), and embark's
# peak RSS during the push and the cold pull. Prints medians and ratios.
#
#   bench/release.sh [ROUNDS] [FILES]    (default 3 rounds, 10000 files; needs `aws`, jq, curl, zstd,
#                                         /usr/bin/time, and `make emulator-env static`)
set -euo pipefail

rounds=${1:-3}
files=${2:-10000}
here=$(cd "$(dirname "$0")/.." && pwd)
embark=${EMBARK_BIN:-$here/target/x86_64-unknown-linux-gnu/release/embark}
aws=$(pyenv which aws 2>/dev/null || command -v aws) || { echo "needs the AWS CLI" >&2; exit 2; }
[ -x "$embark" ] || { echo "build the static binary first: make static" >&2; exit 2; }

# shellcheck source=scripts/emulator.sh
. "$here/scripts/emulator.sh"
work=$(mktemp -d)
start_emulator "$work"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=eu-west-1 AWS_REGION=eu-west-1
export AWS_ENDPOINT_URL=$endpoint EMBARK_STATE_DIR=$work/state
control POST buckets '{"name": "bench-deploy"}' >/dev/null

echo "generating $files files..." >&2
python3 "$here/bench/gen-tree.py" "$work/tree" "$files"
du -sb "$work/tree" | awk '{printf "tree: %.1f MB\n", $1/1e6}' >&2

peak() { awk '/Maximum resident/ {print $6}' "$1"; }  # KiB
/usr/bin/time -v "$embark" -q release push "$work/tree" --to s3://bench-deploy/app 2>"$work/push.time" >/dev/null
push_rss=$(peak "$work/push.time")
id=$(curl -sf "$endpoint/_embark/s3/bench-deploy/app/current" | jq -r .release)
imds=$(control POST launch '{"tags": {"embark:release": "s3://bench-deploy/app"}}' | jq -r '.[0].imds_endpoint')

now() { date +%s.%N; }
: >"$work/embark"; : >"$work/sync"; : >"$work/floor"; : >"$work/rss"
for i in $(seq 1 "$rounds"); do
    for way in embark sync floor; do
        dest=$work/dest-$way-$i; mkdir -p "$dest"
        sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
        start=$(now)
        case $way in
        embark)
            printf '[release]\nroot = "%s"\n' "$dest" >"$work/c.toml"
            AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds /usr/bin/time -v "$embark" -q --config "$work/c.toml" \
                release pull 2>"$work/pull.time" >/dev/null
            peak "$work/pull.time" >>"$work/rss" ;;
        sync)
            "$aws" s3 sync --quiet "s3://bench-deploy/app/objects" "$dest" ;;  # same bytes, one key per file
        floor)
            curl -sf "$endpoint/bench-deploy/app/releases/$id/bundle.tar.zst" -H "Authorization: AWS4-HMAC-SHA256 Credential=bench/20260101/eu-west-1/s3/aws4_request" \
                | zstd -dq | tar -x -C "$dest" ;;
        esac
        echo "$(now) - $start" | bc >>"$work/$way"
        rm -rf "$dest"
    done
done

median() { sort -n "$1" | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
e=$(median "$work/embark"); s=$(median "$work/sync"); f=$(median "$work/floor")

# Incremental: a machine that has the release; change 1% of the files, push, pull.
inc=$work/inc; printf '[release]\nroot = "%s"\n' "$inc" >"$work/c.toml"
AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds "$embark" -q --config "$work/c.toml" release pull >/dev/null
changed=0
while IFS= read -r f1; do
    head -c 2000 /dev/urandom >>"$f1"; changed=$((changed + $(stat -c %s "$f1")))
done < <(find "$work/tree" -type f | sort | awk -v n="$files" 'NR % 100 == 0' )
"$embark" -q release push "$work/tree" --to s3://bench-deploy/app >/dev/null
control DELETE requests >/dev/null
AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds "$embark" -q --config "$work/c.toml" release pull --json >"$work/inc.json"
fetched=$(curl -sf "$endpoint/_embark/requests?operation=GetObject" | jq '[.[] | select(.path | contains("/objects/")) | .bytes_out] | add // 0')
pull_rss=$(sort -n "$work/rss" | tail -1)

cat <<OUT
files: $files, rounds: $rounds (alternating)
cold embark release pull: median ${e}s
aws s3 sync:              median ${s}s   -> embark is $(echo "scale=1; $s / $e" | bc)x faster
GET | zstd -d | tar x:    median ${f}s   -> embark takes $(echo "scale=2; $e / $f" | bc)x the floor
incremental (1% of files changed): changed ${changed} bytes, fetched ${fetched} bytes (objects only; every byte: bench/warm-pull.sh), ratio $(echo "scale=3; $fetched / $changed" | bc)
peak RSS: push $((push_rss / 1024)) MiB, cold pull $((pull_rss / 1024)) MiB
OUT
