#!/bin/sh
# The p2pimg group may use the daemon's API socket. DPKG_ROOT is set when
# dpkg installs into another root without chroot (--root with
# --force-script-chrootless): the group then goes into that root's files.
set -e
root="${DPKG_ROOT:-}"
if ! grep -q '^p2pimg:' "$root/etc/group" 2>/dev/null; then
  if [ -n "$root" ]; then
    groupadd --prefix "$root" --system p2pimg
  else
    groupadd --system p2pimg
  fi
fi
