#!/usr/bin/env bash
# Fails when the dependency rules of DESIGN.md are broken:
#  - chunk, license and policy (and their subpackages) never depend on node or
#    on any libp2p package, directly or indirectly;
#  - only chunk/badgerstore imports badger.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)
fail=0
for pkg in $(go list ./chunk/... ./license/... ./policy/...); do
  bad=$(go list -deps "$pkg" | grep -E "^($mod/node|$mod/cmd|$mod/testnet|github.com/libp2p/)" || true)
  if [ -n "$bad" ]; then
    echo "layering: $pkg depends on: $(echo $bad)"; fail=1
  fi
done
while read -r pkg imports; do
  if [ "$pkg" != "$mod/chunk/badgerstore" ] && echo " $imports " | grep -q "github.com/dgraph-io/badger"; then
    echo "layering: $pkg imports badger (only chunk/badgerstore may)"; fail=1
  fi
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}}' ./...)
[ $fail -eq 0 ] && echo "layering: ok"
exit $fail
