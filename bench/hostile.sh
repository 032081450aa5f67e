#!/bin/bash
# Benchmark (run by hand, never in CI): `embark release pull` of crafted, hostile releases. For each,
# the peak RSS (/usr/bin/time -v) and the bytes written under the release root, against the bounds the
# release format promises: under 64 MiB of RSS, and at most the manifest's total bytes on disk.
#
#   bench/hostile.sh     (needs jq, curl, python3, zstd, /usr/bin/time, and `make emulator-env static`)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
embark=${EMBARK_BIN:-$here/target/x86_64-unknown-linux-gnu/release/embark}
[ -x "$embark" ] || { echo "build the static binary first: make static" >&2; exit 2; }

# shellcheck source=scripts/emulator.sh
. "$here/scripts/emulator.sh"
work=$(mktemp -d)
start_emulator "$work"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=eu-west-1 AWS_REGION=eu-west-1
export AWS_ENDPOINT_URL=$endpoint EMBARK_STATE_DIR=$work/state
control POST buckets '{"name": "hostile-deploy"}' >/dev/null

# A genuine one-file release (5 bytes): the manifest every crafted bundle below claims to match.
mkdir -p "$work/tree"
printf '<?php' >"$work/tree/a.php"
"$embark" -q release push "$work/tree" --to s3://hostile-deploy/app >/dev/null
id=$(curl -sf "$endpoint/_embark/s3/hostile-deploy/app/current" | jq -r .release)
imds=$(control POST launch '{"tags": {"embark:release": "s3://hostile-deploy/app"}}' | jq -r '.[0].imds_endpoint')

# The crafted bundles, written as raw tar to stdout and compressed on the fly (1 GiB bodies of one byte
# repeated compress to a few tens of KB).
cat >"$work/craft.py" <<'PY'
import sys
case = sys.argv[1]
out = sys.stdout.buffer

def header(name, kind, size):
    h = bytearray(512)
    h[0:len(name)] = name.encode()
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[156] = ord(kind)
    h[257:265] = b"ustar  \0"
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)

body = b"A" * (1 << 20)
if case == "pax-size":      # PAX size 1 GiB over a header of 5 bytes, then 1 GiB
    pax = b"19 size=1073741824\n"
    out.write(header("PaxHeader", "x", len(pax)) + pax + bytes(512 - len(pax)) + header("a.php", "0", 5))
    for _ in range(1024):
        out.write(body)
elif case == "long-name":   # a GNU long-name record claiming 1 GiB (the tar crate would buffer it)
    out.write(header("././@LongLink", "L", 1 << 30))
    for _ in range(1024):
        out.write(body)
elif case == "many-pax":    # 2,000 PAX records of 8 KiB each (each at the limit), then the file
    rec = b"8192 path=" + b"x" * (8192 - 11) + b"\n"
    for _ in range(2000):
        out.write(header("PaxHeader", "x", len(rec)) + rec)
    out.write(header("a.php", "0", 5) + b"<?php" + bytes(507))
elif case == "oversize":    # a file whose header claims 5 bytes, followed by 1 GiB
    out.write(header("a.php", "0", 5))
    for _ in range(1024):
        out.write(body)
out.write(bytes(1024))
PY

printf '%-12s %10s %14s %8s  %s\n' case "rss (MiB)" "written (B)" exit "message"
for case in pax-size long-name many-pax oversize; do
    python3 "$work/craft.py" "$case" | zstd -q -3 -o "$work/$case.tar.zst"
    curl -sf -X PUT --data-binary @"$work/$case.tar.zst" \
        "$endpoint/_embark/s3/hostile-deploy/app/releases/$id/bundle.tar.zst" >/dev/null
    root=$work/root-$case; mkdir -p "$root"
    printf '[release]\nroot = "%s"\n' "$root" >"$work/$case.toml"
    set +e
    AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds EMBARK_CONFIG=$work/$case.toml \
        /usr/bin/time -v "$embark" release pull 2>"$work/$case.err" >/dev/null
    code=$?
    set -e
    rss=$(awk '/Maximum resident/ {printf "%.1f", $6/1024}' "$work/$case.err")
    written=$(find "$root" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
    msg=$(grep -m1 'embark: error' "$work/$case.err" | cut -c1-110)
    printf '%-12s %10s %14s %8s  %s\n' "$case" "$rss" "$written" "$code" "$msg"
done
echo "bounds: rss < 64 MiB; written <= manifest bytes (5) + bookkeeping (state, lock: a few hundred bytes)"
