#!/usr/bin/env bash
# Installs the third-party libraries the interop tests verify our tokens and
# certificates with (PyJWT + cryptography, the SPIFFE project's `spiffe`
# package, and `requests` for the token-exchange agent snippet) into a cache
# directory, once. Prints the directory (for PYTHONPATH).
set -euo pipefail
dir="${WRIT_CACHE:-$HOME/.cache/writ}/python"
reqs="PyJWT==2.15.1 cryptography==50.0.2 spiffe==0.3.2 requests==2.34.2"
stamp="$dir/.installed"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$reqs" ]]; then
  mkdir -p "$dir"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --upgrade \
    --target "$dir" $reqs >&2
  echo "$reqs" > "$stamp"
fi
echo "$dir"
