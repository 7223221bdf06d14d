/**
 * The environment the daemon runs with: an allowlist, not the starter's environment. Whoever starts
 * it first (any `broker` command, run by an agent or from a shell full of standing keys) would
 * otherwise hand it AWS_SECRET_ACCESS_KEY, VAULT_TOKEN, GITHUB_TOKEN … and they would sit in
 * /proc/<daemon>/environ for the daemon's whole life. autostart.ts starts it with this environment;
 * `broker daemon run` started any other way (a shell, systemd, launchd) re-executes itself with it
 * (clean-start.ts). README.md, "The daemon", lists it.
 */

/** Variables the daemon (or what it runs on) reads, passed on when set. */
export const DAEMON_ENV_ALLOWLIST: readonly string[] = [
  // Who and where: the runtime directory and socket (socket.cts), the settings file (cli-config.ts).
  'HOME', 'USER', 'LOGNAME', 'PATH', 'XDG_RUNTIME_DIR', 'XDG_CONFIG_HOME', 'TMPDIR',
  // The OS keychain: Secret Service is reached over the D-Bus session bus (libdbus falls back to
  // $XDG_RUNTIME_DIR/bus without it).
  'DBUS_SESSION_BUS_ADDRESS',
  // The broker's own settings.
  'BROKER_URL', 'BROKER_LOG_LEVEL', 'BROKER_DEBUG',
  // Which login store (keychain.ts): the daemon must read the one `broker login` wrote to.
  'BROKER_LOGIN_STORE',
  // How often it asks the service whether a session it holds was stopped (at most 60 s; tests shorten it).
  'BROKER_STATUS_CHECK_SECONDS',
  // Locale and time zone (log timestamps, messages).
  'LANG', 'LANGUAGE', 'TZ',
  // Reaching the broker service and Vault from a company network: extra CAs (read by Node at start)
  // and proxies (Node 24 honours them with NODE_USE_ENV_PROXY=1).
  'NODE_EXTRA_CA_CERTS', 'NODE_USE_SYSTEM_CA', 'NODE_USE_ENV_PROXY',
  'HTTPS_PROXY', 'HTTP_PROXY', 'NO_PROXY', 'https_proxy', 'http_proxy', 'no_proxy',
  // libfaketime (the daemon's clock tests, test/peers/faketime.ts; a developer may use it too): only
  // when set. LD_PRELOAD itself gives nothing away that the starter did not have: whoever starts
  // the daemon could start `broker daemon run` with any LD_PRELOAD anyway, and it names a library,
  // not a secret. Its companions are clock settings.
  'LD_PRELOAD', 'FAKETIME', 'FAKETIME_TIMESTAMP_FILE', 'FAKETIME_NO_CACHE', 'DONT_FAKE_MONOTONIC',
];
/** Whole families: the locale categories. */
const ALLOWED_PREFIXES = ['LC_'];

/**
 * Left out on purpose: NODE_OPTIONS (`--inspect` would open a debugger port into the daemon's
 * memory; `--require` would load arbitrary code) and every credential variable. Nothing else the
 * daemon reads comes from its environment.
 */
export function daemonEnvironment(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) continue;
    if (DAEMON_ENV_ALLOWLIST.includes(k) || ALLOWED_PREFIXES.some((p) => k.startsWith(p))) out[k] = v;
  }
  return out;
}

/** Set on a daemon that was started clean (by autostart, or by its own re-exec), so it does not loop. */
export const DAEMON_CLEAN_MARK = 'BROKER_DAEMON_CLEAN_START';
