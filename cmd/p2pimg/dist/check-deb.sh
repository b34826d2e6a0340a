#!/usr/bin/env bash
# Checks a built .deb (`make package`): installs it with dpkg into a
# scratch root (its maintainer scripts run against that root), then checks
# the binary, the systemd unit (systemd-analyze verify, where installed),
# the default config as a conffile, the data directory and the p2pimg group.
set -euo pipefail
deb=$(realpath "$1")
work=$(mktemp -d "${TMPDIR:-/tmp}/p2pimg-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "check-deb: $*" >&2; exit 1; }
root="$work/root"
mkdir -p "$root/etc" "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
touch "$root/var/lib/dpkg/status"
printf 'root:x:0:\n' > "$root/etc/group"
printf 'root:*::\n' > "$root/etc/gshadow"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
cp /etc/login.defs "$root/etc/" 2>/dev/null || true
dpkg --root="$root" --force-script-chrootless --force-not-root --log=/dev/null -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i into a scratch root failed"; }
for p in usr/bin/p2pimg lib/systemd/system/p2pimg.service etc/p2pimg/daemon.toml; do
  [ -f "$root/$p" ] || fail "/$p is not installed"
done
[ -x "$root/usr/bin/p2pimg" ] || fail "/usr/bin/p2pimg is not executable"
grep -q '^p2pimg:' "$root/etc/group" || fail "the p2pimg group was not created"
gid=$(awk -F: '$1 == "p2pimg" {print $3}' "$root/etc/group")
[ "$(stat -c '%a %u %g' "$root/var/lib/p2pimg")" = "710 0 $gid" ] || fail "/var/lib/p2pimg: $(stat -c '%a %u %g' "$root/var/lib/p2pimg"), want 710 root:p2pimg ($gid)"
dpkg --root="$root" -L p2pimg | grep -qx /lib/systemd/system/p2pimg.service || fail "dpkg does not list the unit"
grep -qx /etc/p2pimg/daemon.toml "$root/var/lib/dpkg/info/p2pimg.conffiles" || fail "daemon.toml is not a conffile"
out=$("$root/usr/bin/p2pimg" --socket "$work/none.sock" version 2>/dev/null || true) # no daemon: exit 1 after the client's line
grep -q '^client' <<<"$out" || fail "the packaged binary does not run: $out"
# The default config parses, and refuses an open cluster (exit 2).
set +e
out=$("$root/usr/bin/p2pimg" daemon --config "$root/etc/p2pimg/daemon.toml" --data "$work/data" --socket-group "" 2>&1); code=$?
set -e
[ $code -eq 2 ] && grep -q "refusing to run an open cluster" <<<"$out" || fail "the default config: exit $code, $out"
if command -v systemd-analyze >/dev/null; then
  sed "s|/usr/bin/p2pimg|$root/usr/bin/p2pimg|" "$root/lib/systemd/system/p2pimg.service" > "$work/p2pimg.service"
  out=$(systemd-analyze verify "$work/p2pimg.service" 2>&1) || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify: $out"
else
  echo "check-deb: systemd-analyze not installed: the unit was not verified"
fi
echo "check-deb: $(basename "$deb") installs into a scratch root with the unit, config, group and data directory in place"
