#!/bin/bash
# Launch-template user-data: run `embark boot` on a freshly launched instance.
#
# Use it as the launch template's user data (it runs once per instance, as root, from cloud-init). On an
# image baked with packer/ the embark-boot.service unit already runs `embark boot`; this script is for
# images without it: it runs the binary from the image, or first downloads a pinned one and checks its
# sha256. Everything it does goes to the console (and so to the EC2 console output) and to a log file.
#
# Variables (set them at the top of the user data, or leave the defaults):
#   EMBARK_BIN            where the binary is, or is installed to     (default /usr/local/bin/embark)
#   EMBARK_BINARY_URL     a pinned binary to fetch when EMBARK_BIN is missing: https://… (curl) or
#                         s3://bucket/key (aws cli)                   (default: none → the image must have it)
#   EMBARK_BINARY_SHA256  its sha256; required with EMBARK_BINARY_URL
#   EMBARK_CONFIG         the configuration file                      (default /etc/embark/embark.toml)
#   EMBARK_CONSOLE        where the log lines also go                 (default /dev/console)
#   EMBARK_LOG            the log file                                (default /var/log/embark-user-data.log)
#   EMBARK_ARGS           extra arguments for `embark boot`, e.g. "--plan"
set -euo pipefail

EMBARK_BIN=${EMBARK_BIN:-/usr/local/bin/embark}
EMBARK_BINARY_URL=${EMBARK_BINARY_URL:-}
EMBARK_BINARY_SHA256=${EMBARK_BINARY_SHA256:-}
EMBARK_CONSOLE=${EMBARK_CONSOLE:-/dev/console}
EMBARK_LOG=${EMBARK_LOG:-/var/log/embark-user-data.log}
EMBARK_ARGS=${EMBARK_ARGS:-}
export EMBARK_CONFIG=${EMBARK_CONFIG:-/etc/embark/embark.toml}

# Every line to the log file and the console as well as to cloud-init's own output.
if [ -w "$EMBARK_CONSOLE" ]; then
    exec > >(tee -a "$EMBARK_LOG" "$EMBARK_CONSOLE") 2>&1
else
    exec > >(tee -a "$EMBARK_LOG") 2>&1
fi

say() { echo "embark-user-data: $*"; }

fetch_binary() {
    local tmp
    if [ -z "$EMBARK_BINARY_SHA256" ]; then
        say "EMBARK_BINARY_URL is set but EMBARK_BINARY_SHA256 is not: refusing to run an unverified binary"
        return 1
    fi
    tmp=$(mktemp "${EMBARK_BIN}.XXXXXX")
    say "fetching $EMBARK_BINARY_URL"
    case $EMBARK_BINARY_URL in
        s3://*) aws s3 cp --only-show-errors "$EMBARK_BINARY_URL" "$tmp" ;;
        *) curl -fsS --retry 5 --retry-connrefused --max-time 120 -o "$tmp" "$EMBARK_BINARY_URL" ;;
    esac
    if ! echo "$EMBARK_BINARY_SHA256  $tmp" | sha256sum --check --status; then
        say "the binary from $EMBARK_BINARY_URL does not have sha256 $EMBARK_BINARY_SHA256: refusing it"
        rm -f "$tmp"
        return 1
    fi
    chmod 0755 "$tmp"
    mv -f "$tmp" "$EMBARK_BIN"
}

if [ ! -x "$EMBARK_BIN" ]; then
    if [ -z "$EMBARK_BINARY_URL" ]; then
        say "$EMBARK_BIN is missing and no EMBARK_BINARY_URL is set: bake embark into the image (packer/) or set both EMBARK_BINARY_URL and EMBARK_BINARY_SHA256"
        exit 1
    fi
    mkdir -p "$(dirname "$EMBARK_BIN")"
    fetch_binary
fi

say "running $EMBARK_BIN boot $EMBARK_ARGS"
# shellcheck disable=SC2086  # EMBARK_ARGS is a list of words
if "$EMBARK_BIN" boot $EMBARK_ARGS; then
    say "boot done"
else
    status=$?
    say "boot failed (exit $status); see \`embark status\`"
    exit "$status"
fi
