#!/usr/bin/env bash
# Installs the third-party JavaScript library the interop tests verify our
# tokens with (`jose`, through the npm registry) into a cache directory, once.
# Prints the node_modules directory (for NODE_PATH).
set -euo pipefail
dir="${WRIT_CACHE:-$HOME/.cache/writ}/node"
reqs="jose@6.2.19"
stamp="$dir/.installed"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$reqs" ]]; then
  mkdir -p "$dir"
  command -v npm >/dev/null || { echo "node-deps: npm is not installed (Node.js 20.19 or later is needed)" >&2; exit 1; }
  npm install --silent --no-audit --no-fund --no-save --prefix "$dir" $reqs >&2
  echo "$reqs" > "$stamp"
fi
echo "$dir/node_modules"
