#!/bin/bash
# Benchmark (run by hand, never in CI): pulls and a push at S3's real shape, scaled down. bench/pace.py
# stands between embark and the emulator: 20 ms before every request, every connection paced at 8 MB/s
# each way, responses and uploads (S3 serves one connection at ~90 MB/s and scales by connections; this is that, scaled down).
# Two binaries side by side in one run, each with a source of its own (pushed by itself):
#   push of the tree, cold pull, warm pull with 1 % of the files changed, warm pull with every file changed;
# against the floors (the bundle's bytes over one stream, and over eight) and `aws s3 sync` of the same
# tree from a plain prefix through the same proxy. Wall time and peak RSS of each run.
#
#   bench/s3-shape.sh OLD NEW [FILES]   (default 4000 files, ~90 MB, bundle ~60 MB; needs jq, curl, bc, /usr/bin/time,
#                                       zstd, tar, `make emulator-env`; `aws` for the sync line, else it is skipped)
#   SHAPE_ROOTS=DIR                     where the pulled releases go (default: the work directory); e.g.
#                                       /dev/shm, to measure the network's shape without this disk's cost
#   SHAPE_PUSH_S3=BIN                   times the pushes against BIN, an S3 server that answers in well
#                                       under a millisecond (s3s-fs: `cargo install s3s-fs@0.14.1 --locked
#                                       --features binary`), through the same pacing, its data on /dev/shm;
#                                       the emulator spends ~3 ms of CPU on each PutObject, so 4,000 new
#                                       objects cost ~11 s of it whatever the client does. The pulls'
#                                       sources are then pushed to the emulator unpaced, untimed.
# The local floor is the bundle unpacked where the releases go, unpaced: curl | zstd -d | tar -x.
set -euo pipefail

old=${1:?the old binary}; new=${2:?the new binary}
files=${3:-4000}
rate=8000000; latency_ms=20
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/emulator.sh
. "$here/scripts/emulator.sh"
work=$(mktemp -d)
roots=$(mktemp -d -p "${SHAPE_ROOTS:-$work}")
start_emulator "$work"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 "$here/bench/pace.py" "$port" "${endpoint##*:}" "$rate" "$latency_ms" &
pace_pid=$!
trap 'kill "$emu_pid" "$pace_pid" ${fast_pids:-} 2>/dev/null || true; rm -rf "$work" "$roots" ${fast_root:-}' EXIT
paced=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=eu-west-1
control POST buckets '{"name": "shape-deploy"}' >/dev/null
# The issue's shape: FILES files, ~23 KB on average (log-normal), two thirds of each random (images,
# minified assets): a bundle of about two thirds of the tree.
python3 - "$work/tree" "$files" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(29)
for i in range(n):
    d = os.path.join(root, "vendor", f"pkg{i % 97}", f"src{i % 13}")
    os.makedirs(d, exist_ok=True)
    size = int(min(rng.lognormvariate(9.6, 0.8), 1_000_000))
    text = (b"<?php return $this->value; // " * (size // 90 + 1))[: size // 3]
    with open(os.path.join(d, f"File{i}.php"), "wb") as f:
        f.write(text + rng.randbytes(size - len(text)))
PY
tree_bytes=$(du -sb "$work/tree" | cut -f1)
sleep 1

# run LABEL CMD...: wall seconds and peak RSS (MiB) of one command, through the proxy (the one at $at if set)
at=
run() {
    local label=$1; shift
    /usr/bin/time -f "%e %M" -o "$work/time" env AWS_ENDPOINT_URL="${at:-$paced}" "$@" >/dev/null 2>"$work/err" ||
        { echo "$label failed:" >&2; tail -5 "$work/err" >&2; exit 1; }
    read -r secs kib <"$work/time"
    echo "$label $secs $((kib / 1024))" >>"$work/results"
}
pull() {  # pull BIN NAME ROOT
    local imds
    imds=$(control POST launch "{\"tags\": {\"embark:release\": \"s3://shape-deploy/$2\"}}" | jq -r '.[0].imds_endpoint')
    printf '[release]\nroot = "%s"\n' "$3" >"$work/$2.toml"
    run "$2-$4" env AWS_EC2_METADATA_SERVICE_ENDPOINT="$imds" EMBARK_STATE_DIR="$roots/$2-state" \
        "$1" -q --config "$work/$2.toml" release pull
}
if [ -n "${SHAPE_PUSH_S3:-}" ]; then
    fast_root=$(mktemp -d -p /dev/shm)
    mkdir "$fast_root/shape-push"
    fast_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$SHAPE_PUSH_S3" --host 127.0.0.1 --port "$fast_port" --access-key bench --secret-key bench "$fast_root" >/dev/null 2>&1 &
    fast_pids=$!
    paced_push=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 "$here/bench/pace.py" "$paced_push" "$fast_port" "$rate" "$latency_ms" &
    fast_pids="$fast_pids $!"
    sleep 1
fi
for who in old new; do
    bin=$old; [ $who = new ] && bin=$new
    if [ -n "${SHAPE_PUSH_S3:-}" ]; then
        at=http://127.0.0.1:$paced_push
        run "$who-push" "$bin" -q release push "$work/tree" --to "s3://shape-push/$who"
        at=
        AWS_ENDPOINT_URL=$endpoint "$bin" -q release push "$work/tree" --to "s3://shape-deploy/$who" >/dev/null
    else
        run "$who-push" "$bin" -q release push "$work/tree" --to "s3://shape-deploy/$who"
    fi
    pull "$bin" "$who" "$roots/$who-root" cold
done
id=$(curl -sf "$endpoint/_embark/s3/shape-deploy/new/current" | jq -r .release)
bundle=$(curl -sf "$endpoint/_embark/s3/shape-deploy/new/releases/$id/bundle.tar.zst" | wc -c)
mkdir "$roots/tar"
/usr/bin/time -f "%e" -o "$work/tar-time" sh -c "curl -sf '$endpoint/_embark/s3/shape-deploy/new/releases/$id/bundle.tar.zst' | zstd -dc | tar -x -C '$roots/tar'"
local_floor=$(cat "$work/tar-time")
rm -rf "$roots/tar"
# 1 % of the files changed, then every file
while IFS= read -r f; do head -c 2000 /dev/urandom >>"$f"; done < <(find "$work/tree" -type f | sort | awk 'NR % 100 == 0')
changed1=$(find "$work/tree" -type f | sort | awk 'NR % 100 == 0' | xargs cat | wc -c)
for who in old new; do
    bin=$old; [ $who = new ] && bin=$new
    AWS_ENDPOINT_URL=$endpoint "$bin" -q release push "$work/tree" --to "s3://shape-deploy/$who" >/dev/null
    pull "$bin" "$who" "$roots/$who-root" warm1
done
while IFS= read -r f; do head -c 16 /dev/urandom >>"$f"; done < <(find "$work/tree" -type f)
for who in old new; do
    bin=$old; [ $who = new ] && bin=$new
    AWS_ENDPOINT_URL=$endpoint "$bin" -q release push "$work/tree" --to "s3://shape-deploy/$who" >/dev/null
    pull "$bin" "$who" "$roots/$who-root" warm100
done
if command -v aws >/dev/null; then
    AWS_ENDPOINT_URL=$endpoint aws s3 sync --only-show-errors "$work/tree" s3://shape-deploy/plain
    run sync-cold aws s3 sync --only-show-errors s3://shape-deploy/plain "$work/synced"
fi

get() { awk -v l="$1" '$1 == l {print $'"$2"'}' "$work/results"; }
ratio() { [ -n "$1" ] && [ -n "$2" ] && echo "scale=2; $1 / $2" | bc || echo "-"; }
one=$(echo "scale=2; $bundle / $rate" | bc); eight=$(echo "scale=2; $bundle / ($rate * 8)" | bc)
push_eight=$(echo "scale=2; $tree_bytes / ($rate * 8)" | bc)
upload_eight=$(echo "scale=2; ($tree_bytes + $bundle) / ($rate * 8)" | bc)
echo "tree: $files files, $tree_bytes bytes; bundle $bundle bytes; ${rate} B/s per stream each way, ${latency_ms} ms per request"
echo "floors: bundle over one stream ${one} s, over eight ${eight} s; the tree over eight streams ${push_eight} s"
echo "  (a first push uploads the tree's objects and the bundle: $((tree_bytes + bundle)) bytes, ${upload_eight} s over eight streams)"
[ -n "${SHAPE_PUSH_S3:-}" ] && echo "pushes timed against $SHAPE_PUSH_S3 (data on /dev/shm), through the same pacing"
echo "local floor: the bundle unpacked into ${SHAPE_ROOTS:-the work directory}, unpaced (curl | zstd -d | tar -x): ${local_floor} s"
printf '%-10s %10s %10s %8s %8s %14s\n' "" "old s" "new s" "old MiB" "new MiB" "new/8-stream"
for what in push cold warm1 warm100; do
    printf '%-10s %10s %10s %8s %8s %14s\n' "$what" "$(get old-$what 2)" "$(get new-$what 2)" "$(get old-$what 3)" \
        "$(get new-$what 3)" "$(ratio "$(get new-$what 2)" "$([ $what = push ] && echo "$push_eight" || echo "$eight")")"
done
echo "warm 1 %: changed bytes $changed1; new warm 100 % / new cold: $(ratio "$(get new-warm100 2)" "$(get new-cold 2)")"
[ -n "$(get sync-cold 2)" ] && echo "aws s3 sync (cold, same tree, same proxy): $(get sync-cold 2) s, $(ratio "$(get sync-cold 2)" "$(get new-cold 2)")x the new cold pull"
exit 0
