#!/bin/bash
# The demo: start the emulator, seed an account (group with a launching hook, address pool, file system,
# bucket, SNS topics with SQS queues), push a release, launch an instance into the group (it waits in
# Pending:Wait on the launching hook) and run `embark boot` on it as user-data would; then show
# `embark status`, the instance InService, its address and the notification.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
embark=${EMBARK_BIN:-$here/target/x86_64-unknown-linux-gnu/release/embark}
# shellcheck source=scripts/emulator.sh
. "$here/scripts/emulator.sh"
work=$(mktemp -d)
start_emulator "$work"

echo "== emulator at $endpoint"
control POST seed '{"name": "web", "pool_size": 4, "group_tags": {"embark:release": "s3://web-deploy/app"}}' >"$work/account.json"
account() { jq -r "$1" "$work/account.json"; }
echo "== seeded: group web (launching hook $(account .hook)), pool of $(account '.addresses|length') addresses, $(account .file_system_id), bucket $(account .bucket), topics"

export AWS_ENDPOINT_URL=$endpoint AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=eu-west-1
app=$work/app
mkdir -p "$app/public" "$app/vendor/acme/lib" "$app/storage/cache"
printf '<?php\necho "hello from embark";\n' >"$app/public/index.php"
printf '<?php\nhttp_response_code(200);\n' >"$app/public/health.php"
printf '<?php\nnamespace Acme;\nclass Lib {}\n' >"$app/vendor/acme/lib/Lib.php"
echo "APP_ENV=dev" >"$app/.env"; echo ".env" >"$app/.embarkignore"
echo
echo "\$ embark release push app --to s3://web-deploy/app -m 'demo release'   (a CI runner would do this)"
"$embark" release push "$app" --to s3://web-deploy/app -m "demo release"

control POST launch '{"group": "web"}' >"$work/instance.json"
instance=$(jq -r '.[0].instance_id' "$work/instance.json")
echo
echo "== launched $instance into group web: $(jq -r '.[0].lifecycle_state' "$work/instance.json")"

export AWS_EC2_METADATA_SERVICE_ENDPOINT
AWS_EC2_METADATA_SERVICE_ENDPOINT=$(jq -r '.[0].imds_endpoint' "$work/instance.json")
unset AWS_REGION  # on the instance, the region comes from IMDS
export EMBARK_CONFIG=$work/embark.toml EMBARK_STATE_DIR=$work/state
cat >"$EMBARK_CONFIG" <<TOML
[[efs]]
file_system = "$(account .file_system_id)"
mount_point = "$work/efs"

[release]
root = "$work/www"
link = "active"

[[release.hooks]]
run = ["sh", "-c", "echo hook: now serving \$EMBARK_RELEASE for role \$EMBARK_ROLE"]

[notify]
success_topic = "$(account .topics.ok.topic_arn)"
error_topic = "$(account .topics.error.topic_arn)"
TOML
echo
echo "== $EMBARK_CONFIG:"
sed 's/^/   /' "$EMBARK_CONFIG"

plan_steps=()
if ! grep -qw nfs4 /proc/filesystems 2>/dev/null && ! modinfo nfsv4 >/dev/null 2>&1; then
    plan_steps=(--plan-step efs)
    echo
    echo "== this machine's kernel has no NFS client: the EFS step runs as --plan (it says why)"
fi
echo
echo "\$ embark boot --plan"
"$embark" boot --plan "${plan_steps[@]}"
echo
echo "\$ embark boot ${plan_steps[*]}   (its log; the report follows once, from embark status)"
"$embark" boot "${plan_steps[@]}" >/dev/null
echo
echo "\$ embark status"
"$embark" status
echo
echo "== $instance is now: $(control GET "instances/$instance" | jq -r .lifecycle_state)"
echo "== its address: $(control GET "addresses?pool=web" | jq -r --arg i "$instance" '.[] | select(.instance_id == $i) | .public_ip')"
echo "== $work/www/active -> $(readlink "$work/www/active")"
echo "== notification on the success topic: $(control GET "messages?queue_url=$(account .topics.ok.queue_url)" | jq -r '.[0].subject')"
echo
echo "\$ embark boot ${plan_steps[*]}   (again: re-checks each step, changes nothing)"
"$embark" -q boot "${plan_steps[@]}"
