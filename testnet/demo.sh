#!/usr/bin/env bash
# The walk-through behind `make demo`: one daemon on this machine, a sample VM
# image, an update of it, and what p2pimg stores and gives back. It removes
# everything it made, also when interrupted.
set -euo pipefail
BIN=$(realpath "${1:-bin/p2pimg}")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/p2pimg-demo.XXXXXX")
DPID=""
cleanup() {
  if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
    kill "$DPID" 2>/dev/null || true
    wait "$DPID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
export P2PIMG_SOCKET="$WORK/node1/p2pimg.sock"

say "1. Start a daemon (its store and API socket live in $WORK/node1)"
"$BIN" daemon --data "$WORK/node1" --log-level warn &
DPID=$!
for _ in $(seq 200); do
  "$BIN" layers >/dev/null 2>&1 && break
  kill -0 "$DPID" 2>/dev/null || { echo "the daemon exited"; exit 1; }
  sleep 0.05
done
run "$BIN" layers

say "2. Make a 192 MiB sample VM disk: random data, a repeated region and a zero run"
mkdir -p "$WORK/images"
img="$WORK/images/vm.raw"
head -c $((96 << 20)) /dev/urandom > "$WORK/rand"
{ head -c $((64 << 20)) "$WORK/rand"; head -c $((32 << 20)) /dev/zero; tail -c $((32 << 20)) "$WORK/rand"; head -c $((64 << 20)) "$WORK/rand" | tail -c $((32 << 20)); tail -c $((32 << 20)) "$WORK/rand"; } > "$img"
rm "$WORK/rand"
ls -l "$img"

say "3. Add it as layer demo-vm:1 (content-defined chunks; repeated and zero data stored once)"
run "$BIN" add demo-vm:1 "$img" --chunking cdc
run "$BIN" stats

say "4. Patch the image (1 MiB rewritten in the middle, 4 KiB inserted near the start) and add it as demo-vm:2"
upd="$WORK/images/vm-patched.raw"
{ head -c $((10 << 20)) "$img"; head -c 4096 /dev/urandom; tail -c +$(((10 << 20) + 1)) "$img"; } > "$upd"
dd if=/dev/urandom of="$upd" bs=1M count=1 seek=100 conv=notrunc status=none
run "$BIN" add demo-vm:2 "$upd" --chunking cdc
echo "(only the chunks around the two changes were new: see 'new' above)"
run "$BIN" layers
run "$BIN" stats

say "5. Check out demo-vm:2 and compare it with the patched image byte for byte"
run "$BIN" checkout demo-vm:2 "$WORK/out"
run cmp "$upd" "$WORK/out/vm-patched.raw"
echo "identical"

say "6. Forget demo-vm:1, collect garbage, and verify every stored chunk"
run "$BIN" rm demo-vm:1
run "$BIN" gc
run "$BIN" verify

say "7. Stop the daemon and remove everything the demo made"
kill "$DPID"; wait "$DPID" || true; DPID=""
echo "done: p2pimg chunked, deduplicated, stored and gave back an image and its update."
