#!/usr/bin/env bash
# `npm run demo`: set up (idempotent), build, and run the local end-to-end demo inside a throwaway
# D-Bus session with an unlocked gnome-keyring (the OS keychain the broker keeps its login in).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.peers/node/bin:$PWD/.peers/venv/bin:$PATH"
node node_modules/typescript/bin/tsc -p tsconfig.json
exec bash scripts/with-keychain.sh node dist/scripts/demo.js
