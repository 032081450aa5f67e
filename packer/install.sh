#!/bin/bash
# Packer provisioner: install embark, its configuration and its systemd units into the image being baked,
# and the kernel NFS client the EFS step needs. Run as root from packer/embark.pkr.hcl with the files
# uploaded to /tmp. Leaves no instance state behind (`embark check --image` verifies it).
set -euo pipefail

install -D -m 0755 /tmp/embark /usr/local/bin/embark
install -d -m 0755 /etc/embark /var/lib/embark
if [ -s /tmp/embark.toml ]; then
    install -m 0644 /tmp/embark.toml /etc/embark/embark.toml
fi
install -m 0644 /tmp/embark-boot.service /etc/systemd/system/embark-boot.service
install -m 0644 /tmp/embark-watch.service /etc/systemd/system/embark-watch.service

# The kernel NFSv4 client (EFS) and CA certificates, with the distribution's package manager.
if command -v dnf >/dev/null; then
    dnf install -y nfs-utils ca-certificates
elif command -v yum >/dev/null; then
    yum install -y nfs-utils ca-certificates
elif command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q nfs-common ca-certificates
fi

systemctl daemon-reload
systemctl enable embark-boot.service embark-watch.service

# Nothing of the builder instance may reach the fleet.
rm -f /var/lib/embark/status.json /var/lib/embark/.status.json.tmp
rm -f /tmp/embark /tmp/embark.toml /tmp/embark-boot.service /tmp/embark-watch.service
