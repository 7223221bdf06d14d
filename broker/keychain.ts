import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BrokerError } from './errors.js';
import { checkSessionKeyring, kernelDelete, kernelGet, kernelSet, KERNEL_KEYRING_HINT } from './kernel-keyring.js';

/**
 * The login store, and the only place the broker keeps a long-lived secret (the refresh token of a
 * developer's broker login, and its device key). Two stores:
 * - the OS keychain: macOS Keychain, Windows Credential Manager, or on Linux the Secret Service
 *   (gnome-keyring, KWallet, KeePassXC) over the D-Bus session bus, through @napi-rs/keyring;
 * - on Linux without a Secret Service (no session bus, or none on it: SSH boxes, CI runners,
 *   containers), the kernel keyring of the login session (kernel-keyring.ts).
 * BROKER_LOGIN_STORE picks one (`secret-service`, `kernel-keyring`) or lets the broker choose
 * (`auto`, the default): the Secret Service when it answers, else the kernel keyring. A Secret
 * Service that is there but fails (locked, a refused prompt) is an error, not a reason to switch:
 * the login would silently move between stores. There is deliberately no fallback to a file: when
 * neither can be used, every call fails with `keychain_unavailable` and says how to get one.
 */

/** Every entry is stored under this service name; the account names what the secret is for. */
export const KEYCHAIN_SERVICE = 'agent-credential-broker';

export type LoginStoreKind = 'secret-service' | 'kernel-keyring';
export interface LoginStoreInfo {
  kind: LoginStoreKind;
  /** What `broker login`, `whoami` and `daemon status` show. */
  label: string;
  /** The session keyring's serial (kernel keyring): two processes share the store when it is the same. */
  keyring?: number;
}

export const LOGIN_STORE_ENV = 'BROKER_LOGIN_STORE';
const SETTINGS = ['auto', 'secret-service', 'kernel-keyring'] as const;
type Setting = (typeof SETTINGS)[number];

const OS_KEYCHAIN_LABEL = process.platform === 'darwin' ? 'OS keychain (macOS Keychain)'
  : process.platform === 'win32' ? 'OS keychain (Windows Credential Manager)' : 'OS keychain (Secret Service)';
export const KERNEL_KEYRING_LABEL = 'kernel keyring (session)';

const UNAVAILABLE_HINT =
  process.platform === 'linux'
    ? 'on Linux the broker uses the Secret Service (gnome-keyring, KWallet or KeePassXC) on the D-Bus ' +
      'session bus; a desktop session has one. On a headless machine install gnome-keyring and dbus, then ' +
      'run `dbus-run-session -- bash` and, inside it, `gnome-keyring-daemon --unlock --components=secrets` ' +
      '(type a keyring password, then Ctrl-D). The broker never falls back to a plaintext file.'
    : 'the broker keeps its login only in the OS keychain (macOS Keychain, Windows Credential Manager) ' +
      'and never falls back to a plaintext file; unlock the keychain and try again.';

/** Neither store: how to get either. */
const BOTH_HINT =
  'use a Secret Service (on a headless machine: gnome-keyring and dbus, started with dbus-run-session; README "Login store"), ' +
  'or the kernel keyring of your login session, which needs keyctl (Debian keyutils) and a session keyring: pam_keyinit at login, ' +
  'or a shell started with `keyctl session -`. The broker never falls back to a plaintext file.';

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

function setting(env: NodeJS.ProcessEnv = process.env): Setting {
  const v = env[LOGIN_STORE_ENV];
  if (v === undefined || v === '') return 'auto';
  if ((SETTINGS as readonly string[]).includes(v)) return v as Setting;
  throw new BrokerError('invalid_config', `${LOGIN_STORE_ENV} must be one of ${SETTINGS.join(', ')}, not ${JSON.stringify(v.slice(0, 40))}`, {
    hint: `unset it to let the broker choose (the Secret Service when there is one, else the kernel keyring of your session)`,
  });
}

/**
 * The Secret Service is not there at all, as opposed to there and failing: no bus address and no
 * bus socket at libdbus's default place, or the binding could not connect to a bus or found no
 * Secret Service on it.
 */
function noBus(env: NodeJS.ProcessEnv): boolean {
  if (env.DBUS_SESSION_BUS_ADDRESS) return false;
  return !(env.XDG_RUNTIME_DIR && existsSync(join(env.XDG_RUNTIME_DIR, 'bus')));
}
const ABSENT = /Couldn't access platform storage|Failed to connect to socket|autolaunch|ServiceUnknown|not provided by any \.service files|Connection refused|No such file or directory/;
const secretServiceAbsent = (e: unknown) => e instanceof BrokerError && e.code === 'keychain_unavailable' && ABSENT.test(e.message);

let chosen: Promise<LoginStoreKind> | undefined;

/**
 * Which store this process uses, decided once (a process keeps its bus and its session keyring).
 * In `auto` on Linux a Secret Service read decides; elsewhere only the OS keychain exists.
 */
function store(): Promise<LoginStoreKind> {
  chosen ??= (async (): Promise<LoginStoreKind> => {
    const s = setting();
    if (s === 'kernel-keyring') {
      if (process.platform !== 'linux') throw new BrokerError('invalid_config', `${LOGIN_STORE_ENV}=kernel-keyring works on Linux only`, { hint: `unset ${LOGIN_STORE_ENV}` });
      await checkSessionKeyring();
      return 'kernel-keyring';
    }
    if (s === 'secret-service' || process.platform !== 'linux') return 'secret-service';
    let why: string;
    if (noBus(process.env)) {
      why = 'no D-Bus session bus';
    } else {
      try {
        await secretServiceGet('broker-store-probe');
        return 'secret-service';
      } catch (e) {
        if (!secretServiceAbsent(e)) throw e;
        why = (e as Error).message.replace(/^no OS keychain available: /, '');
      }
    }
    try {
      await checkSessionKeyring();
    } catch (e) {
      if (!(e instanceof BrokerError)) throw e;
      throw new BrokerError('keychain_unavailable', `no OS keychain available: no Secret Service (${why}) and ${e.message.replace(/^no kernel keyring available: /, 'no kernel keyring: ')}`, {
        cause: e, hint: BOTH_HINT,
      });
    }
    return 'kernel-keyring';
  })();
  chosen.catch(() => { chosen = undefined; });
  return chosen;
}

/** The store this process keeps the login in (deciding it now if need be); keychain_unavailable when there is none. */
export async function loginStoreInUse(): Promise<LoginStoreInfo> {
  const kind = await store();
  if (kind === 'secret-service') return { kind, label: OS_KEYCHAIN_LABEL };
  return { kind, label: KERNEL_KEYRING_LABEL, keyring: (await checkSessionKeyring()).serial };
}

function checkAccount(account: string): void {
  if (typeof account !== 'string' || account.length === 0) {
    throw new TypeError('keychain account must be a non-empty string');
  }
}

async function entry(account: string): Promise<AsyncEntry> {
  keyringModule ??= import('@napi-rs/keyring');
  try {
    const { AsyncEntry } = await keyringModule;
    // Pin Linux to the Secret Service: left to choose, the binding silently falls back to its own
    // keyutils store, in whatever keyring the process has (the per-user one when it has no session
    // keyring). The kernel keyring is used deliberately, by kernel-keyring.ts, when chosen above.
    // Ignored on macOS and Windows.
    return new AsyncEntry(KEYCHAIN_SERVICE, account, { linux: { store: 'secret-service' } });
  } catch (e) {
    throw unavailable(e);
  }
}

async function secretServiceGet(account: string): Promise<string | null> {
  const e = await entry(account);
  try {
    return await e.getPassword();
  } catch (err) {
    throw unavailable(err);
  }
}

/** The secret stored for `account`, or null when there is none. */
export async function keychainGet(account: string): Promise<string | null> {
  checkAccount(account);
  return await store() === 'kernel-keyring' ? kernelGet(KEYCHAIN_SERVICE, account) : secretServiceGet(account);
}

/**
 * Stores (or replaces) the secret for `account`. `expiresAt` (ms): when it is of no use any more
 * (the login's fixed end); the kernel keyring drops it then, the OS keychain keeps it until deleted.
 */
export async function keychainSet(account: string, secret: string, opts: { expiresAt?: number } = {}): Promise<void> {
  checkAccount(account);
  if (typeof secret !== 'string' || secret.length === 0) {
    throw new TypeError('keychain secret must be a non-empty string');
  }
  if (await store() === 'kernel-keyring') return kernelSet(KEYCHAIN_SERVICE, account, secret, opts);
  const e = await entry(account);
  try {
    await e.setPassword(secret);
  } catch (err) {
    throw unavailable(err);
  }
}

/** Removes the secret for `account`; false when there was none. */
export async function keychainDelete(account: string): Promise<boolean> {
  checkAccount(account);
  if (await store() === 'kernel-keyring') return kernelDelete(KEYCHAIN_SERVICE, account);
  const e = await entry(account);
  try {
    return await e.deletePassword();
  } catch (err) {
    throw unavailable(err);
  }
}
