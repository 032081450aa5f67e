# shellcheck shell=bash
# Sourced by scripts/demo.sh and bench/*.sh: start the emulator in the background and wait for it.
#   start_emulator WORKDIR   sets emu_pid and endpoint (and a closed IMDS endpoint on 127.0.0.1 as the
#                            default); stops the emulator when the script exits
#   control METHOD PATH [JSON]   a call to its control API (/_embark/...)

start_emulator() {
    local work=$1 root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    (cd "$root/tests/emulator" && exec .venv/bin/python -m embark_emulator --ready-file "$work/ready.json") \
        >"$work/emulator.log" 2>&1 &
    emu_pid=$!
    trap 'kill "$emu_pid" 2>/dev/null || true; rm -rf "'"$work"'"' EXIT
    for _ in $(seq 1 300); do [ -s "$work/ready.json" ] && break; sleep 0.1; done
    if [ ! -s "$work/ready.json" ]; then
        echo "the emulator did not start; its log:" >&2
        cat "$work/emulator.log" >&2
        exit 1
    fi
    endpoint=$(jq -r .endpoint "$work/ready.json")
    # An embark run without an instance of its own (`release push` from the "workstation") must never
    # reach the link-local metadata address: a closed port on 127.0.0.1 unless a run names its instance.
    export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9
}

control() {
    curl -sf -X "$1" "$endpoint/_embark/$2" -H 'content-type: application/json' -d "${3:-{\}}"
}
