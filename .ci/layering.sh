#!/usr/bin/env bash
# Fails when the dependency rules of the design are broken:
#  - chunk, license and policy (and their subpackages) never depend on node
#    or on any libp2p package, directly or indirectly;
#  - only chunk/badgerstore imports badger;
#  - nothing below node/ imports node/ itself (the wiring sits on top);
#  - node/expose (with node/expose/fuseview) and node/api depend on no
#    libp2p package at all, and on
#    no node/ service; node/policysync imports no libp2p networking (peer
#    ids and keys are names, not networking);
#  - only node/p2p builds libp2p hosts or imports transports, security
#    transports or discovery (and testnet/bench, for the bare libp2p stream
#    it measures the fetch against);
#  - only node/gossip and node/seats import pubsub;
#  - node/registry imports no libp2p, node/p2p or node/xchg (peers' bytes
#    come through node/fetch).
# LAYERING_EXTRA, when set, is one more "pkg import" line to check (the
# self-test below uses it to show that a wrong import fails).
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)
fail=0
bad() { echo "layering: $*"; fail=1; }

for pkg in $(go list ./chunk/... ./license/... ./policy/...); do
  deps=$(go list -deps "$pkg" | grep -E "^($mod/node|$mod/cmd|$mod/testnet|github.com/libp2p/)" || true)
  [ -n "$deps" ] && bad "$pkg depends on: $(echo $deps)"
done
for pkg in $(go list ./node/expose/...) $mod/node/api; do
  deps=$(go list -deps "$pkg" | grep -E "^(github.com/libp2p/|$mod/node/(activate|fetch|gossip|layers|localapi|p2p|policysync|seats|xchg|cluster)$)" || true)
  [ -n "$deps" ] && bad "$pkg depends on: $(echo $deps)"
done

imports=$(go list -f '{{.ImportPath}} {{join .Imports " "}}' ./...)
[ -n "${LAYERING_EXTRA:-}" ] && imports="$imports"$'\n'"$LAYERING_EXTRA"
while read -r pkg deps; do
  for imp in $deps; do
    case "$imp" in
      github.com/dgraph-io/badger*)
        [ "$pkg" != "$mod/chunk/badgerstore" ] && bad "$pkg imports badger (only chunk/badgerstore may)";;
      "$mod/node")
        case "$pkg" in $mod/node/*) bad "$pkg imports $mod/node (nothing below node/ may)";; esac;;
      github.com/libp2p/go-libp2p|github.com/libp2p/go-libp2p/p2p/transport/*|github.com/libp2p/go-libp2p/p2p/security/*|github.com/libp2p/go-libp2p/p2p/discovery/*)
        case "$pkg" in $mod/node/p2p|$mod/testnet/bench) ;; *) bad "$pkg imports $imp (only node/p2p builds hosts)";; esac;;
      github.com/libp2p/go-libp2p-pubsub)
        case "$pkg" in $mod/node/gossip|$mod/node/seats|$mod/testnet/sim) ;; *) bad "$pkg imports pubsub (only node/gossip and node/seats may; testnet/sim counts its bytes)";; esac;;
    esac
    if [ "$pkg" = "$mod/node/registry" ]; then
      case "$imp" in
        github.com/libp2p/*|$mod/node/p2p|$mod/node/xchg) bad "$pkg imports $imp (the registry talks to peers only through fetch)";;
      esac
    fi
    if [ "$pkg" = "$mod/node/policysync" ]; then
      case "$imp" in
        github.com/libp2p/go-libp2p/core/peer|github.com/libp2p/go-libp2p/core/crypto) ;;
        github.com/libp2p/*) bad "$pkg imports $imp (policysync imports no libp2p networking)";;
      esac
    fi
  done
done <<< "$imports"

if [ -z "${LAYERING_EXTRA:-}" ] && [ "${LAYERING_SELFTEST:-1}" = 1 ]; then
  # The check must catch a wrong import: node/expose importing pubsub.
  if LAYERING_SELFTEST=0 LAYERING_EXTRA="$mod/node/expose github.com/libp2p/go-libp2p-pubsub" "$0" >/dev/null 2>&1; then
    bad "self-test: a wrong import (node/expose -> pubsub) was not caught"
  fi
fi
[ $fail -eq 0 ] && echo "layering: ok"
exit $fail
