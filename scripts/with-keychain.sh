#!/usr/bin/env bash
# Runs a command inside a fresh D-Bus session bus with an unlocked gnome-keyring (the Secret Service
# that @napi-rs/keyring talks to on Linux), and exits with the command's exit code.
#
#   bash scripts/with-keychain.sh node --test dist/test/keychain.test.js
#
# Why: the broker keeps its login in the OS keychain and never in a file, and a headless machine or CI
# has no desktop session. Here the keyring lives in a throwaway directory, is unlocked with a random
# throwaway password, and both are gone when the command ends, so tests never touch the developer's
# own keyring (even on a desktop, dbus-run-session gives the command a bus of its own).
# Needs Debian's dbus and gnome-keyring packages (scripts/setup.sh installs them). Works without a TTY.
set -euo pipefail

if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARG...]" >&2
  exit 2
fi
for tool in dbus-run-session gnome-keyring-daemon; do
  if ! command -v "$tool" >/dev/null; then
    echo "with-keychain: $tool not found; install Debian's dbus and gnome-keyring (bash scripts/setup.sh)" >&2
    exit 127
  fi
done

keyring_home=$(mktemp -d "${TMPDIR:-/tmp}/broker-keychain.XXXXXX")
trap 'rm -rf "$keyring_home"' EXIT
export BROKER_KEYRING_HOME=$keyring_home

# Inside the new bus: run gnome-keyring's Secret Service component as a child we can stop, with its
# keyring files in the throwaway directory (XDG_DATA_HOME/keyrings); --unlock creates and unlocks the
# "login" keyring with a random password read from stdin. Wait until it owns org.freedesktop.secrets
# (otherwise D-Bus activation would start a second, locked daemon), run the command, stop the daemon
# and exit with the command's status. (The daemonizing mode returns before the daemon is on the bus
# and can outlive a short command, so it is not used.)
inner='
set -u
password=$(od -An -tx1 -N24 /dev/urandom | tr -d " \n")
mkdir -p "$BROKER_KEYRING_HOME/data" "$BROKER_KEYRING_HOME/run"
chmod 700 "$BROKER_KEYRING_HOME/run"
printf %s "$password" | XDG_DATA_HOME="$BROKER_KEYRING_HOME/data" \
  XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$BROKER_KEYRING_HOME/run}" \
  gnome-keyring-daemon --foreground --unlock --components=secrets >/dev/null &
daemon=$!
unset password BROKER_KEYRING_HOME
stop_daemon() { kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; }
trap "stop_daemon; exit 143" TERM
trap "stop_daemon; exit 130" INT
ready=0
for _ in $(seq 100); do
  if dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
      org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null | grep -q "boolean true"; then
    ready=1; break
  fi
  kill -0 "$daemon" 2>/dev/null || break
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "with-keychain: gnome-keyring-daemon did not start its Secret Service" >&2
  stop_daemon
  exit 1
fi
status=0
"$@" || status=$?
stop_daemon
exit "$status"
'
status=0
dbus-run-session -- bash -c "$inner" with-keychain "$@" || status=$?
exit "$status"
