#!/bin/bash
# Benchmark (run by hand, never in CI): binding an Elastic IP the classic way (bash + aws cli + jq:
# describe-addresses with a tag filter, take the first free, associate-address) against
# `embark eip bind`, on the same emulator, alternating runs. Prints medians and the ratio.
#
#   bench/eip.sh [ROUNDS]        (default 15; needs `aws` (AWS CLI), jq, curl, and `make emulator-env static`)
set -euo pipefail

rounds=${1:-15}
here=$(cd "$(dirname "$0")/.." && pwd)
embark=${EMBARK_BIN:-$here/target/x86_64-unknown-linux-gnu/release/embark}
command -v aws >/dev/null || { echo "needs the AWS CLI (pip install awscli)" >&2; exit 2; }
# The CLI itself, not a version manager's shim in front of it (that would flatter embark).
aws=$(pyenv which aws 2>/dev/null || command -v aws)
[ -x "$embark" ] || { echo "build the static binary first: make static" >&2; exit 2; }

# shellcheck source=scripts/emulator.sh
. "$here/scripts/emulator.sh"
work=$(mktemp -d)
start_emulator "$work"

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=eu-west-1
export AWS_ENDPOINT_URL=$endpoint EMBARK_CONFIG=$work/empty.toml EMBARK_STATE_DIR=$work/state
: >"$work/empty.toml"   # a named config file must exist; empty: defaults plus the group's tags
control POST addresses "{\"pool\": \"bench\", \"count\": $((rounds * 2 + 4))}" >/dev/null

classic() {  # what the user-data scripts do today
    local imds=$1 token iid alloc
    token=$(curl -sf -X PUT "$imds/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')
    iid=$(curl -sf -H "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/instance-id")
    alloc=$("$aws" ec2 describe-addresses --endpoint-url "$endpoint" \
        --filters Name=tag:embark:pool,Values=bench --output json |
        jq -r '[.Addresses[] | select(.AssociationId == null)][0].AllocationId')
    "$aws" ec2 associate-address --endpoint-url "$endpoint" --allocation-id "$alloc" \
        --instance-id "$iid" --no-allow-reassociation >/dev/null
}

now() { date +%s.%N; }
: >"$work/classic"; : >"$work/embark"
for _ in $(seq 1 "$rounds"); do
    for way in classic embark; do
        imds=$(control POST launch '{"az": "eu-west-1a"}' | jq -r '.[0].imds_endpoint')
        start=$(now)
        if [ "$way" = classic ]; then
            classic "$imds"
        else
            AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds "$embark" -q eip bind --pool bench >/dev/null
        fi
        echo "$(now) - $start" | bc >>"$work/$way"
    done
done

median() { sort -n "$1" | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
c=$(median "$work/classic"); e=$(median "$work/embark")
echo "rounds: $rounds (alternating); $("$aws" --version 2>&1); $(nproc) cores"
echo "classic (bash + aws cli + jq): median ${c}s"
echo "embark eip bind:               median ${e}s"
echo "ratio: $(echo "scale=1; $c / $e" | bc)x"
