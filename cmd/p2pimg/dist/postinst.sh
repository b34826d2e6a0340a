#!/bin/sh
# The data directory holds the API socket: the p2pimg group may reach it
# (mode 0710), nothing else. The group is looked up in the root being
# installed into (DPKG_ROOT: see preinst).
set -e
root="${DPKG_ROOT:-}"
gid=$(awk -F: '$1 == "p2pimg" {print $3}' "$root/etc/group")
mkdir -p "$root/var/lib/p2pimg"
chown "0:$gid" "$root/var/lib/p2pimg"
chmod 0710 "$root/var/lib/p2pimg"
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
echo "p2pimg: set the cluster in /etc/p2pimg/daemon.toml, then: systemctl enable --now p2pimg"
