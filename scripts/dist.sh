#!/bin/bash
# Package a built embark binary for publishing: dist/embark-<version>-<arch>.tar.gz (the binary, its man
# page, shell completions, the example configuration, the systemd units) and dist/SHA256SUMS.
#
#   scripts/dist.sh BINARY [OUTDIR] [ARCH]     (make dist calls it with the static binary)
set -euo pipefail

bin=${1:?usage: scripts/dist.sh BINARY [OUTDIR] [ARCH]}
out=${2:-dist}
arch=${3:-$(uname -m)}
here=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -n 1)
name=embark-$version-$arch

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name/completions" "$stage/$name/systemd" "$stage/$name/man" "$out"
install -m 0755 "$bin" "$stage/$name/embark"
# Run only where the binary can run (an aarch64 binary cannot generate on an x86_64 builder).
if "$bin" --version >/dev/null 2>&1; then
    "$bin" -q man --dir "$stage/$name/man" >/dev/null   # embark.1 and one page per command
    for shell in bash zsh fish; do
        "$bin" completions "$shell" >"$stage/$name/completions/embark.$shell"
    done
    "$bin" config example >"$stage/$name/embark.example.toml"
fi
install -m 0644 "$here"/packer/*.service "$stage/$name/systemd/"
install -m 0644 "$here/README.md" "$here/CHANGELOG.md" "$stage/$name/"
tar -C "$stage" --owner=0 --group=0 --sort=name -czf "$out/$name.tar.gz" "$name"
(cd "$out" && sha256sum ./*.tar.gz | sed 's# \./# #' >SHA256SUMS)
echo "$out/$name.tar.gz"
