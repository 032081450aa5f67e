#!/bin/bash
# Benchmark (run by hand, never in CI): a boot's critical path on AWS (issue "Performance at fleet
# scale", item 2). Every AWS call in the emulator gets 50 ms of added latency (a round trip in-region);
# IMDS does not. A full `embark boot` (hook lookup, EIP from the pool, EFS mount targets — the mount
# itself as a plan, there is no NFS client here —, a 40-file release, target group, lifecycle action,
# notification) on a fresh instance, alternating the previous binary and this one. From the emulator's
# request log (start and end of every call): the AWS calls, and the longest chain of calls that ran one
# after another (the sequential round trips).
#
#   bench/boot-path.sh BEFORE_BINARY [ROUNDS]    (default 5; needs jq, curl, `make emulator-env static`)
set -euo pipefail

before=${1:?the previous binary (built from the parent commit) to compare with}
rounds=${2:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
after=${EMBARK_BIN:-$here/target/x86_64-unknown-linux-gnu/release/embark}
[ -x "$after" ] || { echo "build the static binary first: make static" >&2; exit 2; }

# shellcheck source=scripts/emulator.sh
. "$here/scripts/emulator.sh"
work=$(mktemp -d)
start_emulator "$work"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=eu-west-1 AWS_ENDPOINT_URL=$endpoint
control POST seed "{\"name\": \"path\", \"pool_size\": $((rounds * 2 + 2)), \"group_tags\": {\"embark:release\": \"s3://path-deploy/app\"}}" >"$work/account.json"
fs=$(jq -r .file_system_id "$work/account.json")
tg=$(control POST target-groups '{"name": "path-tg"}' | jq -r .arn)
ok=$(jq -r .topics.ok.topic_arn "$work/account.json")
for i in $(seq 1 40); do
    mkdir -p "$work/tree/src/m$((i % 5))"
    head -c 5000 /dev/urandom | base64 >"$work/tree/src/m$((i % 5))/F$i.php"
done
"$after" -q release push "$work/tree" --to s3://path-deploy/app >/dev/null
for service in ec2 autoscaling s3 elasticfilesystem sns elasticloadbalancing; do
    control POST faults "{\"service\": \"$service\", \"latency_ms\": 50}" >/dev/null
done

# The longest chain of calls each starting after the previous one ended (greedy by end time).
chain() {
    jq '[.[] | select(.service != "imds" and .end != null) | {s: .time, e: .end}] | sort_by(.e)
        | reduce .[] as $c ({n: 0, t: 0}; if $c.s >= .t then {n: (.n + 1), t: $c.e} else . end) | .n'
}
: >"$work/rows"
for i in $(seq 1 "$rounds"); do
    for way in before after; do
        bin=$before; [ "$way" = after ] && bin=$after
        imds=$(control POST launch '{"group": "path"}' | jq -r '.[0].imds_endpoint')
        root=$work/root-$way-$i
        cat >"$work/$way.toml" <<TOML
[[efs]]
file_system = "$fs"
mount_point = "$work/efs-$way-$i"

[release]
root = "$root"

[health]
target_groups = ["$tg"]

[notify]
success_topic = "$ok"
TOML
        control DELETE requests >/dev/null
        start=$(date +%s.%N)
        AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds EMBARK_STATE_DIR=$work/state-$way-$i \
            "$bin" -q --config "$work/$way.toml" boot --plan-step efs >/dev/null
        wall=$(echo "$(date +%s.%N) - $start" | bc)
        log=$(curl -sf "$endpoint/_embark/requests")
        calls=$(jq '[.[] | select(.service != "imds")] | length' <<<"$log")
        echo "$way $wall $calls $(chain <<<"$log")" >>"$work/rows"
        [ -n "${BENCH_SHOW:-}" ] && jq -r '.[] | select(.service != "imds") | "\(.time) \(.end) \(.service) \(.operation)"' <<<"$log" >&2
    done
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for way in before after; do
    w=$(awk -v w="$way" '$1 == w {print $2}' "$work/rows" | median)
    c=$(awk -v w="$way" '$1 == w {print $3}' "$work/rows" | median)
    s=$(awk -v w="$way" '$1 == w {print $4}' "$work/rows" | median)
    echo "$way: median wall ${w}s, AWS calls $c, sequential round trips $s (x 50 ms = $(echo "$s * 0.05" | bc)s)"
done
