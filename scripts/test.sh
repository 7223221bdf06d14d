#!/usr/bin/env bash
# The whole test suite, on real peers: installs what is missing (scripts/setup.sh), builds, then runs
# every test inside a throwaway D-Bus session with an unlocked gnome-keyring (the OS keychain).
# Usage: npm test            (all tests)
#        npm test -- test/e2e-aws-cli.test.ts   (some files; .ts paths are mapped to dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.peers/node/bin:$PWD/.peers/venv/bin:$PATH"
rm -rf dist
node node_modules/typescript/bin/tsc -p tsconfig.json
files=()
for f in "$@"; do f=${f%.ts}; files+=("dist/${f}.js"); done
[ ${#files[@]} -gt 0 ] || mapfile -t files < <(ls dist/test/*.test.js)
# A hard limit for the whole run: a peer or child process that hangs must fail the suite, not hold
# CI until its own limit (90 min); --test-force-exit ends a test file whose tests are done even if a
# leaked handle (an orphaned child holding a pipe) would keep it alive. A full run takes about 6–7 min
# on 2 cores.
exec timeout --kill-after=30s 40m bash scripts/with-keychain.sh node --test --test-concurrency=2 --test-timeout=300000 --test-force-exit "${files[@]}"
