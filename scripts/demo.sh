#!/bin/bash
# The demo: start the emulator, seed an account (group with a launching hook, address pool, file system,
# bucket, topics), launch an instance into the group, and run embark on it as user-data would.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
embark=${EMBARK_BIN:-$here/target/x86_64-unknown-linux-gnu/release/embark}
# shellcheck source=scripts/emulator.sh
. "$here/scripts/emulator.sh"
work=$(mktemp -d)
start_emulator "$work"

echo "== emulator at $endpoint"
control POST seed '{"name": "web", "pool_size": 4}' >"$work/account.json"
echo "== seeded: group web (launching hook $(jq -r .hook "$work/account.json")), pool of $(jq '.addresses|length' "$work/account.json") addresses, $(jq -r .file_system_id "$work/account.json"), bucket $(jq -r .bucket "$work/account.json")"
control POST launch '{"group": "web"}' >"$work/instance.json"
instance=$(jq -r '.[0].instance_id' "$work/instance.json")
echo "== launched $instance into group web: $(jq -r '.[0].lifecycle_state' "$work/instance.json")"

export AWS_EC2_METADATA_SERVICE_ENDPOINT
AWS_EC2_METADATA_SERVICE_ENDPOINT=$(jq -r '.[0].imds_endpoint' "$work/instance.json")
export AWS_ENDPOINT_URL=$endpoint AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
export EMBARK_CONFIG=$work/embark.toml EMBARK_STATE_DIR=$work/state
cat >"$EMBARK_CONFIG" <<TOML
[[efs]]
file_system = "$(jq -r .file_system_id "$work/account.json")"
mount_point = "$work/efs"
fstab = true
TOML

echo
echo "\$ embark identity"
"$embark" identity
echo
echo "\$ embark check"
# The efs line fails on this machine (no NFS client in its kernel); on an instance it passes.
"$embark" check || echo "(exit $?: expected on a kernel without NFSv4)"
echo
echo "\$ embark eip bind --plan"
"$embark" eip bind --plan
echo
echo "\$ embark eip bind"
"$embark" eip bind
echo
echo "\$ embark eip bind   (again: nothing to do)"
"$embark" eip bind
echo
echo "\$ embark eip status"
"$embark" eip status
echo
echo "\$ embark efs mount --plan   (plan only: this machine's kernel has no NFS client)"
"$embark" efs mount --plan
