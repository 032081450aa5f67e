#!/bin/bash
# Benchmark (run by hand, never in CI): N deploy agents (`embark release watch`) on one machine, one
# group, against the emulator, Auto Scaling's Describe calls throttled for the whole account (as AWS
# does). For each push: the time from the end of the push to the last instance switched, and the spread
# between the first and the last switch (from the `current` links' times); over the run: throttled
# Auto Scaling calls, Auto Scaling calls per agent per deploy, and AWS requests per agent per poll
# interval while nothing is pushed. Prints medians over ROUNDS pushes. Compare binaries with EMBARK_BIN.
#
#   bench/watch.sh [AGENTS] [ROUNDS] [INTERVAL_S] [THROTTLE_RPS]
#       (default 3 agents, 5 rounds, 2 s, 10 rps; needs jq, curl, bc, `make emulator-env static`)
#   BENCH_SHOW=1: per round, the requests by operation, when agents saw the push and staged, the markers
#   and `_go`; BENCH_LOG=DIR: each round's request log saved there (roundN.json, roundN.pushed)
#   BENCH_ROLLOUT='["1", "10%", "100%"]': `[watch] rollout` (default one wave); BENCH_ONCE=1: a run-once
#   prepare hook (it counts its runs); either one also validates every switch against a local app
#   (`[health] url`, 2 successes) and reports push → last instance validated (from the agents'
#   deploy.json) and the time and requests of one `embark release status` of the whole fleet
set -euo pipefail

agents=${1:-3}
rounds=${2:-5}
interval=${3:-2}
throttle=${4:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
embark=${EMBARK_BIN:-$here/target/x86_64-unknown-linux-gnu/release/embark}
[ -x "$embark" ] || { echo "build the static binary first: make static" >&2; exit 2; }

# shellcheck source=scripts/emulator.sh
. "$here/scripts/emulator.sh"
work=$(mktemp -d)
start_emulator "$work"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_ENDPOINT_URL=$endpoint
control POST seed '{"name": "wbench", "pool_size": 1, "lifecycle_hook": false, "group_tags": {"embark:release": "s3://wbench-deploy/app"}}' >/dev/null
tree=$work/tree; mkdir -p "$tree/src"
for i in $(seq 1 200); do head -c 3000 /dev/urandom | base64 >"$tree/src/F$i.php"; done
push() { echo "<?php return '$1';" >"$tree/version.php"; AWS_REGION=eu-west-1 "$embark" -q release push "$tree" --to s3://wbench-deploy/app | awk '{print $3}'; }
push v0 >/dev/null
control POST throttle "{\"service\": \"autoscaling\", \"rps\": $throttle}" >/dev/null

# An app every agent validates against (one local HTTP server answering 200), when the rollout is gated.
extra=""
if [ -n "${BENCH_ROLLOUT:-}${BENCH_ONCE:-}" ]; then
    mkdir -p "$work/app"; echo ok >"$work/app/health.php"
    (cd "$work/app" && exec python3 -u -m http.server 0 --bind 127.0.0.1 >"$work/app.log" 2>&1) &
    app_pid=$!
    for _ in $(seq 1 100); do port=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$work/app.log" | head -1); [ -n "$port" ] && break; sleep 0.1; done
    extra=$(printf '[health]\nurl = "http://127.0.0.1:%s/health.php"\ntimeout = "30s"\nsuccesses = 2\n' "$port")
fi
watch_extra=${BENCH_ROLLOUT:+rollout = $BENCH_ROLLOUT}
hooks=""
# shellcheck disable=SC2016 # $EMBARK_RELEASE is the hook's own, expanded when it runs
[ -n "${BENCH_ONCE:-}" ] && hooks=$(printf '[[release.hooks]]\nphase = "prepare"\nonce = true\nrun = ["sh", "-c", "echo $EMBARK_RELEASE >> %s"]\n' "$work/once.log")

pids=()
control POST launch "{\"group\": \"wbench\", \"count\": $agents}" | jq -r '.[].imds_endpoint' >"$work/imds"
n=0
while read -r imds; do
    n=$((n + 1)); mkdir -p "$work/a$n"
    printf '[release]\nroot = "%s"\n%s\n[watch]\ninterval = "%ss"\nbarrier = "2m"\n%s\n%s\n' \
        "$work/a$n/www" "$hooks" "$interval" "$watch_extra" "$extra" >"$work/a$n/c.toml"
    AWS_ACCESS_KEY_ID=bench$n AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds EMBARK_STATE_DIR=$work/a$n/state \
        "$embark" -q --config "$work/a$n/c.toml" release watch 2>"$work/a$n/log" &
    pids+=($!)
done <"$work/imds"
stop_agents() {  # SIGTERM, up to 20 s to exit (the agent's contract), then any left are reported and killed
    kill "${pids[@]}" 2>/dev/null || true
    local left=()
    for _ in $(seq 1 100); do
        left=(); for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
        [ ${#left[@]} = 0 ] && break
        sleep 0.2
    done
    if [ ${#left[@]} -gt 0 ]; then
        echo "${#left[@]} agents did not exit within 20 s of SIGTERM: killed" >&2
        kill -9 "${left[@]}" 2>/dev/null || true
    fi
    kill "$emu_pid" 2>/dev/null; [ -n "${app_pid:-}" ] && kill "$app_pid" 2>/dev/null; rm -rf "$work"
}
trap stop_agents EXIT

wait_all() {  # until every agent's link points at $1 (at most 5 minutes)
    for _ in $(seq 1 3000); do
        local ok=1
        for i in $(seq 1 "$agents"); do
            [ "$(readlink "$work/a$i/www/current" 2>/dev/null)" = "releases/$1" ] || ok=0
        done
        [ $ok = 1 ] && return 0
        sleep 0.2
    done
    echo "the fleet did not reach $1" >&2; exit 1
}
: >"$work/last"; : >"$work/spread"; : >"$work/asg"
wait_all "$(curl -sf "$endpoint/_embark/s3/wbench-deploy/app/current" | jq -r .release)"
# Idle: twelve intervals with nothing pushed (one heartbeat period of every agent: its status object is
# written again every twelve intervals, or every minute when that is rarer), in the steady state (right
# after a switch an agent's next poll comes anywhere within the interval, so the first interval after a
# deploy holds a few extra).
sleep $((interval + interval / 5 + 1))
control DELETE requests >/dev/null
idle_intervals=12; [ $((interval * 12)) -lt 60 ] && idle_intervals=$(( (60 + interval - 1) / interval ))
sleep $((interval * idle_intervals))
curl -sf "$endpoint/_embark/requests" >"$work/idle.json"
idle=$(jq '[.[] | select(.service != "imds")] | length' "$work/idle.json")
polls=$(jq '[.[] | select(.operation == "GetObject" and (.path | endswith("/app/current")))] | length' "$work/idle.json")
others=$(jq -r '[.[] | select(.service != "imds") | select((.operation == "GetObject" and (.path | endswith("/app/current"))) | not)
    | .operation] | group_by(.) | map("\(.[0])=\(length)") | join(" ")' "$work/idle.json")
for r in $(seq 1 "$rounds"); do
    control DELETE requests >/dev/null
    id=$(push "v$r"); pushed=$(date +%s.%N)
    wait_all "$id"
    [ -n "${BENCH_LOG:-}" ] && { mkdir -p "$BENCH_LOG"; curl -sf "$endpoint/_embark/requests" >"$BENCH_LOG/round$r.json";
        echo "$pushed" >"$BENCH_LOG/round$r.pushed"; }
    [ -n "${BENCH_SHOW:-}" ] && curl -sf "$endpoint/_embark/requests" |
        jq -r --argjson t "$pushed" '[.[] | select(.service != "imds")] | group_by(.operation)
            | map("\(.[0].operation)=\(length) (slowest \(map((.end // .time) - .time) | max * 1000 | floor) ms)") | join(", ")' >&2
    [ -n "${BENCH_SHOW:-}" ] && curl -sf "$endpoint/_embark/requests?service=s3" |
        jq -r --argjson t "$pushed" --arg id "$id" 'def at: ((.time - $t) * 100 | floor) / 100;
            [.[] | select(.operation == "PutObject" and (.path | contains("/ready/\($id)/i-")))] as $m
            | [.[] | select(.operation == "PutObject" and (.path | contains("/ready/\($id)/_go-")))] as $g
            | ([.[] | select(.operation == "GetObject") | .path | sub(".*/ready/.*/_go-.*"; "_go") | sub(".*/ready/.*/_members-.*"; "_members")
                | sub(".*/objects/.*"; "objects") | sub(".*/releases/.*"; "manifests") | sub(".*/current$"; "pointer")]
                | group_by(.) | map("\(.[0])=\(length)") | join(" ")) as $gets
            | ([.[] | select(.access_key | startswith("bench")) | select(.access_key != "bench")] | group_by(.access_key)
                | map(([.[] | select(.operation == "GetObject" and (.path | endswith("/current")) and .status == 200)
                        | at] | min) as $seen
                      | ([.[] | select(.operation == "PutObject" and (.path | contains("/ready/")))] | map(at) | min) as $ready
                      | {$seen, stage: ($ready - $seen)})) as $a
            | "per agent: new release seen \($a | map(.seen) | min)–\($a | map(.seen) | max) s after the push, staged in \($a | map(.stage) | sort | .[length / 2 | floor]) s (median) / \($a | map(.stage) | max) s (most)\n"
            + "GETs: \($gets); after the push: markers \($m | map(at) | min)–\($m | map(at) | max) s, _go written \($g | map(at) | join(" ")) s"' >&2
    curl -sf "$endpoint/_embark/requests?service=autoscaling" |
        jq -r '"\([.[] | select(.status == 200)] | length) \([.[] | select(.status != 200)] | length)"' >>"$work/asg"
    times=$(for i in $(seq 1 "$agents"); do stat -c %.9Y "$work/a$i/www/current"; done | sort -n)
    first=$(echo "$times" | head -1); last=$(echo "$times" | tail -1)
    echo "$last - $pushed" | bc >>"$work/last"
    echo "$last - $first" | bc >>"$work/spread"
    if [ -n "$extra" ]; then  # the last validation: the latest `finished` of the agents' reports of this deploy
        for _ in $(seq 1 600); do  # every agent's report of this deploy written (at most 2 minutes)
            [ "$(cat "$work"/a*/state/deploy.json 2>/dev/null | jq -r --arg id "$id" 'select(.command | endswith($id)) | select(.finished) | .finished' | wc -l)" = "$agents" ] && break
            sleep 0.2
        done
        validated=$(cat "$work"/a*/state/deploy.json | jq -r --arg id "$id" 'select(.command | endswith($id)) | .finished' |
            sort | tail -1)
        echo "$(date -d "$validated" +%s.%N) - $pushed" | bc >>"$work/validated"
    fi
    [ -n "${BENCH_ONCE:-}" ] && grep -c "^$id\$" "$work/once.log" >>"$work/once"
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
calls=$(awk '{s += $1} END {print s}' "$work/asg"); throttled=$(awk '{s += $2} END {print s}' "$work/asg")
most=$(cat "$work"/a*/state/deploy.json 2>/dev/null | jq -r '.steps[] | select(.name == "barrier") | .detail' |
    sed -n 's/.*Auto Scaling asked \([0-9]*\) times.*/\1/p' | sort -n | tail -1)
echo "agents: $agents, rounds: $rounds (interval ${interval} s ± 20 %, Auto Scaling throttled at $throttle rps, 200-file release, one file changed per push)"
echo "push → last instance switched: median $(median "$work/last")s"
echo "spread first → last switch:    median $(median "$work/spread")s"
echo "Auto Scaling calls per deploy: $(echo "scale=2; $calls / $rounds" | bc) in all, $(echo "scale=3; $calls / $rounds / $agents" | bc) per agent (most by one agent in its last deploy: ${most:-n/a}); throttled: $throttled"
if [ -n "$extra" ]; then
    echo "push → last instance validated: median $(median "$work/validated")s (rollout ${BENCH_ROLLOUT:-[\"100%\"]})"
    control DELETE requests >/dev/null
    started=$(date +%s.%N)
    AWS_REGION=eu-west-1 "$embark" -q release status --from s3://wbench-deploy/app --json >"$work/status.json"
    took=$(echo "$(date +%s.%N) - $started" | bc)
    counted=$(curl -sf "$endpoint/_embark/requests" | jq -r '[.[] | select(.service != "imds") | select(.access_key == "bench")]
        | group_by(.operation) | map("\(.[0].operation)=\(length)") | join(" ")')
    echo "release status of $(jq '.instances | length' "$work/status.json") instances: ${took}s, requests: $counted; $(jq -r .summary.text "$work/status.json")"
fi
[ -n "${BENCH_ONCE:-}" ] && echo "run-once hook runs per deploy: $(sort -u "$work/once" | tr '\n' ' ')"
echo "idle: $(echo "scale=3; $idle / $agents / $idle_intervals" | bc) AWS requests per agent per interval, $(echo "scale=3; $idle / $polls" | bc) per poll ($polls pointer GETs${others:+; others: $others})"
