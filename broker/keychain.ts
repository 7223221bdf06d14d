import { BrokerError } from './errors.js';

/**
 * The OS keychain, and the only place the broker keeps a long-lived secret (the refresh token of a
 * developer's broker login). macOS Keychain, Windows Credential Manager, or on Linux the Secret
 * Service (gnome-keyring, KWallet, KeePassXC) over the D-Bus session bus, through @napi-rs/keyring.
 * There is deliberately no fallback to a file: when no keychain can be used, every call fails with
 * `keychain_unavailable` and says how to get one.
 */

/** Every entry is stored under this service name; the account names what the secret is for. */
export const KEYCHAIN_SERVICE = 'agent-credential-broker';

const UNAVAILABLE_HINT =
  process.platform === 'linux'
    ? 'on Linux the broker uses the Secret Service (gnome-keyring, KWallet or KeePassXC) on the D-Bus ' +
      'session bus; a desktop session has one. On a headless machine install gnome-keyring and dbus, then ' +
      'run `dbus-run-session -- bash` and, inside it, `gnome-keyring-daemon --unlock --components=secrets` ' +
      '(type a keyring password, then Ctrl-D). The broker never falls back to a plaintext file.'
    : 'the broker keeps its login only in the OS keychain (macOS Keychain, Windows Credential Manager) ' +
      'and never falls back to a plaintext file; unlock the keychain and try again.';

type KeyringModule = typeof import('@napi-rs/keyring');
type AsyncEntry = InstanceType<KeyringModule['AsyncEntry']>;

// Loaded on first use: the native binding costs start-up time that commands without a login
// (policy validate, server, …) should not pay.
let keyringModule: Promise<KeyringModule> | undefined;

function unavailable(e: unknown): BrokerError {
  // The binding's messages describe the platform failure (e.g. "Couldn't access platform storage:
  // AccessDenied", "DBus error: …"); they never contain the secret.
  const reason = e instanceof Error ? e.message : String(e);
  return new BrokerError('keychain_unavailable', `no OS keychain available: ${reason}`, { cause: e, hint: UNAVAILABLE_HINT });
}

async function entry(account: string): Promise<AsyncEntry> {
  if (typeof account !== 'string' || account.length === 0) {
    throw new TypeError('keychain account must be a non-empty string');
  }
  keyringModule ??= import('@napi-rs/keyring');
  try {
    const { AsyncEntry } = await keyringModule;
    // Pin Linux to the Secret Service: left to choose, the binding silently falls back to the
    // kernel keyutils keyring, which is per login session and lost on reboot, so `broker login`
    // would appear to work and then be forgotten. Ignored on macOS and Windows.
    return new AsyncEntry(KEYCHAIN_SERVICE, account, { linux: { store: 'secret-service' } });
  } catch (e) {
    throw unavailable(e);
  }
}

/** The secret stored for `account`, or null when there is none. */
export async function keychainGet(account: string): Promise<string | null> {
  const e = await entry(account);
  try {
    return await e.getPassword();
  } catch (err) {
    throw unavailable(err);
  }
}

/** Stores (or replaces) the secret for `account`. */
export async function keychainSet(account: string, secret: string): Promise<void> {
  if (typeof secret !== 'string' || secret.length === 0) {
    throw new TypeError('keychain secret must be a non-empty string');
  }
  const e = await entry(account);
  try {
    await e.setPassword(secret);
  } catch (err) {
    throw unavailable(err);
  }
}

/** Removes the secret for `account`; false when there was none. */
export async function keychainDelete(account: string): Promise<boolean> {
  const e = await entry(account);
  try {
    return await e.deletePassword();
  } catch (err) {
    throw unavailable(err);
  }
}
