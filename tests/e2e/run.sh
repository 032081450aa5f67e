#!/bin/bash
# The end-to-end suite (issue 28, `make e2e`): what ships around the binary, run for real. A Debian root
# file system is built once (debootstrap, cached under target/e2e), baked with packer/install.sh exactly
# as the Packer template's provisioner runs it, and booted under a real systemd (systemd-nspawn) and a
# real cloud-init against the emulator. One line per scenario; exit 1 when any fails.
#
# Network: the scenarios run in a network namespace of the suite's own (unshare --net; the suite proves
# it before starting anything): only a loopback holding 169.254.169.254, where the emulator answers both
# as IMDS (port 80, `/latest/...` as on EC2) and as the AWS APIs (port 4566). So the units and user-data
# run exactly as shipped; the one thing the containers are given is where "AWS" is, as a machine-wide
# systemd setting (DefaultEnvironment=AWS_ENDPOINT_URL=…), because there is no AWS here.
#
#   tests/e2e/run.sh            (root; needs systemd-nspawn, debootstrap, unshare, nsenter, ip, curl, jq)
#   E2E_KEEP=1: keep the work directory (containers' roots and logs) for a look afterwards
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
embark=${EMBARK_BIN:-$here/target/x86_64-unknown-linux-gnu/release/embark}
cache=${E2E_CACHE:-$here/target/e2e}
suite=${E2E_SUITE:-bookworm}
mirror=${E2E_MIRROR:-http://deb.debian.org/debian}
packages=systemd,systemd-sysv,dbus,cloud-init,python3-cffi-backend,iproute2,ca-certificates,curl
skip() { echo "e2e: SKIPPED, nothing was tested: $*"; exit 0; }

# ---- stage 1, in the machine's own network: the base file system and the bake (both need the mirror) ----
if [ -z "${E2E_INSIDE:-}" ]; then
    [ "$(id -u)" = 0 ] || skip "not root (systemd-nspawn, debootstrap and network namespaces need root)"
    for tool in systemd-nspawn debootstrap unshare nsenter ip curl jq chroot pgrep; do
        command -v "$tool" >/dev/null || skip "$tool is missing (apt-get install systemd-container debootstrap iproute2 curl jq procps)"
    done
    [ -x "$embark" ] || { echo "e2e: build the static binary first: make static" >&2; exit 2; }
    [ -x "$here/tests/emulator/.venv/bin/python" ] || { echo "e2e: make emulator-env first" >&2; exit 2; }
    started=$(date +%s)
    mkdir -p "$cache"
    base=$cache/base-$suite-$(echo "$packages" | sha256sum | cut -c1-12).tar
    if [ ! -s "$base" ]; then
        echo "e2e: building the base root file system ($suite, minbase + systemd + cloud-init), once"
        rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
        debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
            { tail -20 "$cache/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
        # What a cloud image of this distribution sets up for cloud-init: the NoCloud datasource only (no
        # probing of other clouds), and a locale a minbase image has.
        printf 'datasource_list: [NoCloud, None]\nlocale: C.UTF-8\n' >"$rootfs/etc/cloud/cloud.cfg.d/90-e2e.cfg"
        rm -f "$rootfs/etc/machine-id"; touch "$rootfs/etc/machine-id"
        chmod 0755 "$rootfs"   # mktemp's 0700 would be the image's / (services running as users could not reach anything)
        tar -C "$rootfs" -cf "$base.tmp" . && mv "$base.tmp" "$base"
        rm -rf "$rootfs"
    fi
    work=$(mktemp -d /tmp/embark-e2e.XXXXXX)
    echo "e2e: base root file system ready ($(du -h "$base" | cut -f1), $(( $(date +%s) - started )) s)"

    # Bake: packer/install.sh in a copy of the base, as the template's provisioner runs it (the same files
    # uploaded to /tmp, the same variable, `sudo -E bash install.sh`), then `embark check --image` in it.
    image=$work/image; mkdir -p "$image"; tar -C "$image" -xf "$base"; chmod 0755 "$image"
    cp "$embark" "$image/tmp/embark"
    cp "$here/packer/embark.toml" "$image/tmp/embark.toml"
    cp "$here/packer/embark-boot.service" "$here/packer/embark-watch.service" "$here/packer/install.sh" "$image/tmp/"
    cp /etc/resolv.conf "$image/etc/resolv.conf"
    mount -t proc proc "$image/proc"; mount --bind /dev "$image/dev"
    baked=0
    chroot "$image" env INSTALL_CLOUDWATCH_AGENT=false bash /tmp/install.sh >"$work/bake.log" 2>&1 &&
        chroot "$image" /usr/local/bin/embark check --image >>"$work/bake.log" 2>&1 && baked=1
    umount "$image/dev" "$image/proc"
    rm -f "$image/tmp/install.sh"; : >"$image/etc/resolv.conf"
    if [ $baked = 1 ]; then
        echo "e2e: ok    bake: packer/install.sh as the provisioner runs it, then embark check --image passes"
    else
        echo "e2e: FAIL  bake: see below"; tail -30 "$work/bake.log"
        exit 1
    fi
    tar -C "$image" -cf "$work/image.tar" . && rm -rf "$image"
    mkdir -p "$work/stock"; tar -C "$work/stock" -xf "$base"; chmod 0755 "$work/stock"; tar -C "$work/stock" -cf "$work/stock.tar" . && rm -rf "$work/stock"
    status=0
    unshare --net -- env E2E_INSIDE=1 E2E_WORK="$work" E2E_STARTED="$started" \
        E2E_MACHINE_NETNS="$(readlink /proc/self/ns/net)" "$0" || status=$?
    if [ -z "${E2E_KEEP:-}" ]; then rm -rf "$work"; else echo "e2e: kept $work"; fi
    exit $status
fi

# ---- stage 2, in the suite's own network namespace ----
work=$E2E_WORK
# The proof: another namespace than the one the suite started in, and nothing in it but a loopback.
if [ -z "${E2E_MACHINE_NETNS:-}" ] || [ "$(readlink /proc/self/ns/net)" = "$E2E_MACHINE_NETNS" ]; then
    echo "e2e: refusing to run: not in a network namespace of its own" >&2; exit 1
fi
links=$(ip -o link | awk -F': ' '{print $2}' | tr '\n' ' ')
[ "$links" = "lo " ] || { echo "e2e: refusing to run: the namespace has more than a loopback ($links)" >&2; exit 1; }
ip link set lo up
ip addr add 169.254.169.254/32 dev lo
endpoint=http://169.254.169.254:4566
(cd "$here/tests/emulator" && exec .venv/bin/python -m embark_emulator --host 169.254.169.254 --port 4566 \
    --imds-port 80 --ready-file "$work/ready.json") >"$work/emulator.log" 2>&1 &
emu_pid=$!
containers=()
# shellcheck disable=SC2317 # called by the trap
cleanup() {  # containers asked to stop (nspawn shuts the container down), then killed after 20 s
    for c in "${containers[@]}"; do kill "$c" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        local left=0
        for c in "${containers[@]}"; do kill -0 "$c" 2>/dev/null && left=1; done
        [ "$left" = 0 ] && break
        sleep 0.2
    done
    for c in "${containers[@]}"; do kill -9 "$c" 2>/dev/null || true; done
    kill "$emu_pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 300); do [ -s "$work/ready.json" ] && break; sleep 0.1; done
[ -s "$work/ready.json" ] || { echo "e2e: the emulator did not start"; cat "$work/emulator.log"; exit 1; }
control() { curl -sf -X "$1" "$endpoint/_embark/$2" -H 'content-type: application/json' -d "${3:-{\}}"; }
export AWS_ENDPOINT_URL=$endpoint AWS_ACCESS_KEY_ID=e2e AWS_SECRET_ACCESS_KEY=e2e AWS_REGION=eu-west-1
# The suite's own embark runs (pushes) name no instance: IMDS is not theirs to ask.
export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9

failed=0
pass() { echo "e2e: ok    $1 ($(( $(date +%s) - scenario_start )) s)"; }
fail() { echo "e2e: FAIL  $1"; failed=1; }
until_true() {  # until_true SECONDS COMMAND...: bounded
    local limit=$1; shift
    for _ in $(seq 1 $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    return 1
}

# A container of `tar` for instance `$2`: its root, the emulator as "AWS" machine-wide, booted in the
# background; sets `root`, `leader` (the container's PID 1, for nsenter) and `nspawn`.
boot_container() {
    local tar=$1 id=$2 name=$3
    root=$work/$name
    if [ ! -d "$root" ]; then
        mkdir -p "$root"; tar -C "$root" -xf "$tar"; chmod 0755 "$root"
    fi
    mkdir -p "$root/etc/systemd/system.conf.d"
    printf '[Manager]\nDefaultEnvironment=AWS_ENDPOINT_URL=%s\n' "$endpoint" >"$root/etc/systemd/system.conf.d/e2e-aws.conf"
    control POST imds/default "{\"instance_id\": \"$id\"}" >/dev/null
    systemd-nspawn -D "$root" --register=no --keep-unit -b --machine="$name" >>"$work/$name.console" 2>&1 &
    nspawn=$!
    containers+=("$nspawn")
    leader=""
    for _ in $(seq 1 100); do
        # The container's PID 1: nspawn's child running systemd.
        leader=$(pgrep -x -P "$nspawn" systemd || true)
        [ -n "$leader" ] && break
        sleep 0.1
    done
    [ -n "$leader" ] || { echo "e2e: the container $name did not start"; tail -20 "$work/$name.console"; return 1; }
}
inside() { nsenter -t "$leader" -a "$@"; }
unit_state() { inside systemctl show -p ActiveState --value "$1"; }
# Waits for a oneshot unit to finish starting (active or failed), bounded.
settled() {
    local unit=$1 state
    for _ in $(seq 1 900); do
        state=$(unit_state "$unit" 2>/dev/null || true)
        case $state in active | failed) echo "$state"; return 0 ;; esac
        sleep 0.2
    done
    echo "timeout"
}
poweroff() {  # the container powered off cleanly (ExecStop ran), bounded
    inside systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 1 600); do kill -0 "$nspawn" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$nspawn" 2>/dev/null; return 1
}
lifecycle() { control GET "instances/$1" | jq -r .lifecycle_state; }
current() { readlink "$root/var/www/app/current" 2>/dev/null | sed 's#releases/##'; }
push() {  # push DIR SOURCE: the new release's id
    "$embark" -q release push "$1" --to "$2" | awk '{print $3}'
}
# shellcheck disable=SC2317 # called through until_true
is_current() { [ "$(current)" = "$1" ]; }
# shellcheck disable=SC2317 # called through until_true
is_active() { [ "$(unit_state "$1")" = active ]; }
journal() { inside journalctl -u "$1" --no-pager -o cat 2>/dev/null | tail -"${2:-20}"; }

tree=$work/tree; mkdir -p "$tree/public"; echo '<?php echo 1;' >"$tree/public/index.php"

# ---- image boot: the baked image under systemd, from Pending:Wait into service; a deploy; a reboot; a drain
scenario_start=$(date +%s)
control POST seed '{"name": "e2eimg", "pool_size": 1, "terminating_hook": true, "group_tags": {"embark:release": "s3://e2eimg-deploy/app"}}' >/dev/null
v1=$(push "$tree" s3://e2eimg-deploy/app)
inst=$(control POST launch '{"group": "e2eimg", "role": "e2e-role"}' | jq -r '.[0].instance_id')
before=$(lifecycle "$inst")
boot_container "$work/image.tar" "$inst" image
state=$(settled embark-boot.service)
why=""
[ "$before" = "Pending:Wait" ] || why="the instance was $before before the boot, not Pending:Wait"
[ -z "$why" ] && [ "$state" != active ] && why="embark-boot.service is $state: $(journal embark-boot.service)"
[ -z "$why" ] && [ "$(lifecycle "$inst")" != InService ] && why="the instance is $(lifecycle "$inst"), not InService"
[ -z "$why" ] && [ "$(current)" != "$v1" ] && why="current is '$(current)', not $v1"
if [ -z "$why" ]; then
    bound=$(control GET "addresses?pool=e2eimg" | jq -r --arg i "$inst" '.[] | select(.instance_id == $i) | .public_ip')
    [ -n "$bound" ] || why="no address of the pool e2eimg bound to $inst"
fi
[ -z "$why" ] && ! until_true 30 is_active embark-watch.service && why="embark-watch.service is $(unit_state embark-watch.service)"
if [ -z "$why" ]; then
    echo '<?php echo 2;' >"$tree/public/index.php"
    v2=$(push "$tree" s3://e2eimg-deploy/app)
    until_true 60 is_current "$v2" || why="the agent did not deploy $v2 (current '$(current)'): $(journal embark-watch.service)"
fi
if [ -z "$why" ]; then pass "image boot: Pending:Wait → InService, address bound, $v1 live, the agent deployed $v2"; else fail "image boot: $why"; fi

# A reboot: the boot is the no-op re-check, the agent resumes.
scenario_start=$(date +%s)
why=""
poweroff || why="the container did not power off"
if [ -z "$why" ]; then
    boot_container "$work/image.tar" "$inst" image
    state=$(settled embark-boot.service)
    [ "$state" = active ] || why="embark-boot.service is $state after the reboot: $(journal embark-boot.service)"
fi
if [ -z "$why" ]; then
    said=$(journal embark-boot.service 40)
    grep -q "already" <<<"$said" || grep -q "nothing" <<<"$said" || why="the second boot did not say it found everything done: $said"
fi
[ -z "$why" ] && ! until_true 30 is_active embark-watch.service && why="the agent did not resume"
[ -z "$why" ] && [ "$(current)" != "$v2" ] && why="current is '$(current)' after the reboot"
if [ -z "$why" ]; then pass "reboot: the boot re-checks and changes nothing, the agent resumes on $v2"; else fail "reboot: $why"; fi

# Scale-in: the group terminates the instance (Terminating:Wait); the agent's drain, or the poweroff's
# ExecStop, completes the terminating action.
scenario_start=$(date +%s)
why=""
control POST terminate "{\"instance_id\": \"$inst\"}" >/dev/null
poweroff || why="the container did not power off"
if [ -z "$why" ]; then
    ls=$(control GET lifecycle | jq -r --arg i "$inst" '[.[] | select(.instance_id == $i and (.transition | test("TERMINATING")))] | map(.result) | join(" ")')
    [ "$ls" = CONTINUE ] || why="the terminating action was completed as '$ls', not CONTINUE"
fi
[ -z "$why" ] && ! jq -e '.status == "done"' "$root/var/lib/embark/drain.json" >/dev/null 2>&1 && why="no completed drain report: $(cat "$root/var/lib/embark/drain.json" 2>/dev/null)"
if [ -z "$why" ]; then pass "drain: terminated by the group, powered off: the terminating action completed (CONTINUE) and drain.json done"; else fail "drain: $why"; fi


# What completed the lifecycle actions of an instance: "CONTINUE CONTINUE", "ABANDON".
results() { control GET lifecycle | jq -r --arg i "$1" '[.[] | select(.instance_id == $i) | .result] | join(" ")'; }

# ---- warm pool: launched into the pool, stopped, started again into service ----
scenario_start=$(date +%s)
why=""
control POST seed '{"name": "e2ewarm", "pool_size": 1, "group_tags": {"embark:release": "s3://e2ewarm-deploy/app"}}' >/dev/null
w1=$(push "$tree" s3://e2ewarm-deploy/app)
inst=$(control POST launch '{"group": "e2ewarm", "role": "e2e-role", "warm_pool": "Warmed:Stopped"}' | jq -r '.[0].instance_id')
[ "$(lifecycle "$inst")" = "Warmed:Pending:Wait" ] || why="launched into the pool as $(lifecycle "$inst"), not Warmed:Pending:Wait"
if [ -z "$why" ]; then
    boot_container "$work/image.tar" "$inst" warm
    state=$(settled embark-boot.service)
    [ "$state" = active ] || why="the boot into the pool: embark-boot.service is $state: $(journal embark-boot.service)"
fi
[ -z "$why" ] && [ "$(lifecycle "$inst")" != "Warmed:Stopped" ] && why="after the boot into the pool: $(lifecycle "$inst")"
[ -z "$why" ] && { poweroff || why="the container did not power off"; }
if [ -z "$why" ]; then
    control POST "instances/$inst" '{"warmed": null}' >/dev/null   # the group takes it into service
    [ "$(lifecycle "$inst")" = "Pending:Wait" ] || why="out of the pool: $(lifecycle "$inst"), not Pending:Wait"
fi
if [ -z "$why" ]; then
    boot_container "$work/image.tar" "$inst" warm
    state=$(settled embark-boot.service)
    [ "$state" = active ] || why="the boot out of the pool: embark-boot.service is $state: $(journal embark-boot.service)"
fi
[ -z "$why" ] && [ "$(lifecycle "$inst")" != InService ] && why="out of the pool: $(lifecycle "$inst"), not InService"
[ -z "$why" ] && [ "$(results "$inst")" != "CONTINUE CONTINUE" ] && why="the lifecycle actions were completed as: $(results "$inst")"
[ -z "$why" ] && [ "$(current)" != "$w1" ] && why="current is '$(current)', not $w1"
[ -z "$why" ] && poweroff
if [ -z "$why" ]; then pass "warm pool: the unit completes the pool's action and, started again, the one into service"; else fail "warm pool: $why"; fi

# ---- a boot that fails is visible: the unit failed with embark's sentence, the action ABANDONed ----
scenario_start=$(date +%s)
why=""
control POST seed '{"name": "e2efail", "pool_size": 1, "group_tags": {"embark:release": "s3://e2efail-deploy/app"}}' >/dev/null
inst=$(control POST launch '{"group": "e2efail", "role": "e2e-role"}' | jq -r '.[0].instance_id')
boot_container "$work/image.tar" "$inst" failing
state=$(settled embark-boot.service)
said=$(journal embark-boot.service 60)
[ "$state" = failed ] || why="embark-boot.service is $state with no release pushed"
[ -z "$why" ] && ! grep -q "s3://e2efail-deploy/app" <<<"$said" && why="the journal does not name the source: $said"
[ -z "$why" ] && [ "$(results "$inst")" != ABANDON ] && why="the lifecycle action was completed as '$(results "$inst")', not ABANDON"
poweroff || true
if [ -z "$why" ]; then pass "failure: embark-boot.service failed, the journal says why ($(grep -m1 -o 'nothing .*pushed[^.;]*' <<<"$said" || echo 'source named')), ABANDON"; else fail "failure: $why"; fi

# ---- user-data on a stock image (no embark in it): userdata/boot.sh, then userdata/cloud-config.yaml ----
# The binary comes from a local HTTP server (as from a release page) and is checked against its sha256.
mkdir -p "$work/www"; cp "$embark" "$work/www/embark"
sum=$(sha256sum "$work/www/embark" | cut -d' ' -f1)
(cd "$work/www" && exec python3 -m http.server 8080 --bind 169.254.169.254) >"$work/http.log" 2>&1 &
containers+=("$!")
# The app cloud-config.yaml's health check probes (http://127.0.0.1/aws-health-check/).
mkdir -p "$work/app/aws-health-check"; echo ok >"$work/app/aws-health-check/index.html"
(cd "$work/app" && exec python3 -m http.server 80 --bind 127.0.0.1) >"$work/app.log" 2>&1 &
containers+=("$!")
until_true 10 curl -sf "http://169.254.169.254:8080/embark" -o /dev/null
seed_nocloud() {  # seed_nocloud ROOT INSTANCE USER-DATA-FILE
    mkdir -p "$1/var/lib/cloud/seed/nocloud"
    printf 'instance-id: %s\nlocal-hostname: %s\n' "$2" "$2" >"$1/var/lib/cloud/seed/nocloud/meta-data"
    cp "$3" "$1/var/lib/cloud/seed/nocloud/user-data"
}
# shellcheck disable=SC2317 # called through until_true
cloud_init_finished() { inside cloud-init status 2>/dev/null | grep -qE "status: (done|error|degraded)"; }

for variant in boot.sh cloud-config.yaml; do
    scenario_start=$(date +%s)
    why=""
    group=e2eud$([ $variant = boot.sh ] && echo s || echo c)
    control POST seed "{\"name\": \"$group\", \"pool_size\": 1, \"group_tags\": {\"embark:release\": \"s3://$group-deploy/app\"}}" >/dev/null
    u1=$(push "$tree" "s3://$group-deploy/app")
    inst=$(control POST launch "{\"group\": \"$group\", \"role\": \"e2e-role\"}" | jq -r '.[0].instance_id')
    if [ $variant = boot.sh ]; then
        # The variables the script documents, set at the top of the user data.
        { echo '#!/bin/bash'; echo "EMBARK_BINARY_URL=http://169.254.169.254:8080/embark"; echo "EMBARK_BINARY_SHA256=$sum"
          tail -n +2 "$here/userdata/boot.sh"; } >"$work/user-data"
    else
        # The values the file says to set: the binary's URL and sha256, the application's hook.
        sed -e "s#https://example.com/embark/0.1.0/embark#http://169.254.169.254:8080/embark#" \
            -e "s#0\{64\}#$sum#" \
            -e 's#run = \["systemctl", "reload", "php8.2-fpm"\]#run = ["true"]#' \
            -e '/owner = "www-data"/d' "$here/userdata/cloud-config.yaml" >"$work/user-data"
    fi
    rm -rf "$work/ud-$variant"; mkdir -p "$work/ud-$variant"; tar -C "$work/ud-$variant" -xf "$work/stock.tar"; chmod 0755 "$work/ud-$variant"
    seed_nocloud "$work/ud-$variant" "$inst" "$work/user-data"
    boot_container "$work/stock.tar" "$inst" "ud-$variant"
    until_true 300 cloud_init_finished && inside cloud-init status 2>/dev/null | grep -q "status: done" ||
        why="cloud-init is not done: $(inside cloud-init status --long 2>&1 | tail -5); $(tail -15 "$root/var/log/cloud-init-output.log" 2>/dev/null)"
    [ -z "$why" ] && [ "$(lifecycle "$inst")" != InService ] && why="the instance is $(lifecycle "$inst"): $(tail -15 "$root/var/log/cloud-init-output.log" 2>/dev/null)"
    [ -z "$why" ] && [ "$(current)" != "$u1" ] && why="current is '$(current)', not $u1"
    [ -z "$why" ] && [ -x "$root/usr/local/bin/embark" ] || why=${why:-"the binary was not installed"}
    poweroff || true
    if [ -z "$why" ]; then pass "user-data ($variant): cloud-init fetched the pinned binary, checked it, ran the boot: InService, $u1 live"; else fail "user-data ($variant): $why"; fi
done

echo "e2e: $( [ $failed = 0 ] && echo "every scenario passed" || echo "FAILED" ) in $(( $(date +%s) - E2E_STARTED )) s"
exit $failed
