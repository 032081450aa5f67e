#!/bin/bash
# Benchmark (run by hand, never in CI): a whole boot the classic way — the bash + aws cli + jq user-data
# script (IMDS token and identity, describe-addresses + associate-address, `aws s3 sync` of the release,
# symlink flip, complete-lifecycle-action) — against `embark boot` doing the same steps on the same
# emulator with the same small release, alternating runs, each on a fresh instance waiting on the group's
# launching hook. Prints medians, the ratio, and embark's own CPU time.
#
#   bench/boot.sh [ROUNDS]     (default 11; needs `aws`, jq, curl, bc, /usr/bin/time, `make emulator-env static`)
set -euo pipefail

rounds=${1:-11}
here=$(cd "$(dirname "$0")/.." && pwd)
embark=${EMBARK_BIN:-$here/target/x86_64-unknown-linux-gnu/release/embark}
aws=$(pyenv which aws 2>/dev/null || command -v aws) || { echo "needs the AWS CLI" >&2; exit 2; }
[ -x "$embark" ] || { echo "build the static binary first: make static" >&2; exit 2; }

# shellcheck source=scripts/emulator.sh
. "$here/scripts/emulator.sh"
work=$(mktemp -d)
start_emulator "$work"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=eu-west-1
export AWS_ENDPOINT_URL=$endpoint
control POST seed "{\"name\": \"bench\", \"pool_size\": $((rounds * 2 + 2)), \"group_tags\": {\"embark:release\": \"s3://bench-deploy/app\"}}" >"$work/account.json"

# The same small release both ways: 40 PHP files, ~200 KB.
tree=$work/tree
for i in $(seq 1 40); do
    mkdir -p "$tree/src/m$((i % 5))"
    head -c 5000 /dev/urandom | base64 >"$tree/src/m$((i % 5))/F$i.php"
done
AWS_REGION=eu-west-1 "$embark" -q release push "$tree" --to s3://bench-deploy/app >/dev/null
"$aws" s3 sync --quiet "$tree" s3://bench-deploy/classic/

classic() {  # what the user-data scripts do today
    local imds=$1 root=$2 token iid az alloc stamp
    token=$(curl -sf -X PUT "$imds/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')
    iid=$(curl -sf -H "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/instance-id")
    az=$(curl -sf -H "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/placement/availability-zone")
    alloc=$("$aws" ec2 describe-addresses --region "${az%?}" \
        --filters Name=tag:embark:pool,Values=bench --output json |
        jq -r '[.Addresses[] | select(.AssociationId == null)][0].AllocationId')
    "$aws" ec2 associate-address --region "${az%?}" --allocation-id "$alloc" --instance-id "$iid" \
        --no-allow-reassociation >/dev/null
    stamp=$(date +%Y%m%d%H%M%S%N)
    mkdir -p "$root/releases/$stamp"
    "$aws" s3 sync --quiet --region "${az%?}" s3://bench-deploy/classic/ "$root/releases/$stamp"
    ln -sfn "releases/$stamp" "$root/current.tmp" && mv -Tf "$root/current.tmp" "$root/current"
    "$aws" autoscaling complete-lifecycle-action --region "${az%?}" --auto-scaling-group-name bench \
        --lifecycle-hook-name bench-launching --instance-id "$iid" --lifecycle-action-result CONTINUE
}

now() { date +%s.%N; }
: >"$work/classic"; : >"$work/embark"; : >"$work/cpu"
for i in $(seq 1 "$rounds"); do
    for way in classic embark; do
        imds=$(control POST launch '{"group": "bench"}' | jq -r '.[0].imds_endpoint')
        root=$work/root-$way-$i; mkdir -p "$root"
        start=$(now)
        if [ "$way" = classic ]; then
            classic "$imds" "$root"
        else
            printf '[release]\nroot = "%s"\n' "$root" >"$work/c.toml"
            AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds EMBARK_STATE_DIR=$work/state-$i \
                /usr/bin/time -f "%U %S" -o "$work/time" "$embark" -q --config "$work/c.toml" boot >/dev/null
            awk '{print $1 + $2}' "$work/time" >>"$work/cpu"
        fi
        echo "$(now) - $start" | bc >>"$work/$way"
        state=$(control GET "instances/$(basename "$imds")" | jq -r .lifecycle_state)
        [ "$state" = InService ] || { echo "$way left the instance $state" >&2; exit 1; }
    done
done

median() { sort -n "$1" | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
c=$(median "$work/classic"); e=$(median "$work/embark"); cpu=$(median "$work/cpu")
echo "rounds: $rounds (alternating, fresh instance each, same release: 40 files)"
echo "classic user-data (bash + aws cli + jq): median ${c}s"
echo "embark boot:                             median ${e}s  (CPU ${cpu}s user+sys)"
echo "ratio: $(echo "scale=1; $c / $e" | bc)x"
