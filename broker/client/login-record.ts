import type { JWK } from 'jose';
import { BrokerError } from '../errors.js';
import { keychainDelete, keychainGet, keychainSet } from '../keychain.js';
import type { LoginInfo } from '../wire/service-api.js';

/**
 * A developer's broker login, as kept in the login store (the OS keychain, or the kernel keyring of
 * the session where there is none: keychain.ts), in two items under the broker's service name,
 * never written anywhere else:
 * - `login:<server>`: the login record: whose, the current refresh token (rotated at every refresh,
 *   so the daemon writes each new one back), and the login on the service (its id, generation and
 *   fixed end);
 * - `device-key:<server>`: the private JWK of the device key the refresh tokens are bound to (DPoP,
 *   RFC 9449), apart from the token: the daemon reads it once at start and keeps it as a
 *   non-extractable key; the record alone refreshes nothing.
 * A v1 login (one item holding both, from brokers before rotation) is not read: its refresh token
 * is one the service no longer honours, so the developer logs in again.
 */
export interface LoginRecord {
  v: 2;
  serverUrl: string;
  developer: string;
  refreshToken: string;
  login: LoginInfo;
}

export function keychainAccount(serverUrl: string): string {
  return `login:${serverUrl}`;
}

export function deviceKeyAccount(serverUrl: string): string {
  return `device-key:${serverUrl}`;
}

/** Both items are of no use after the login's fixed end: a store that can drop them then does. */
function endOf(expiresAt: string | undefined): { expiresAt?: number } {
  const t = expiresAt === undefined ? NaN : Date.parse(expiresAt);
  return Number.isFinite(t) ? { expiresAt: t } : {};
}

export async function saveLogin(r: LoginRecord): Promise<void> {
  await keychainSet(keychainAccount(r.serverUrl), JSON.stringify(r), endOf(r.login.expiresAt));
}

/** `loginEndsAt`: the login's fixed end (LoginInfo.expiresAt), when known. */
export async function saveDeviceKey(serverUrl: string, privateJwk: JWK, loginEndsAt?: string): Promise<void> {
  await keychainSet(deviceKeyAccount(serverUrl), JSON.stringify(privateJwk), endOf(loginEndsAt));
}

/** The stored login for this service, or null when there is none; not_logged_in when it is unreadable or a v1 one. */
export async function loadLogin(serverUrl: string): Promise<LoginRecord | null> {
  const raw = await keychainGet(keychainAccount(serverUrl));
  if (raw === null) return null;
  let r: Omit<Partial<LoginRecord>, 'v'> & { v?: unknown };
  try {
    r = JSON.parse(raw) as typeof r;
  } catch {
    throw corrupt(serverUrl);
  }
  if (r.v === 1) {
    throw new BrokerError('not_logged_in', `the login to ${serverUrl} was made by an older broker and must be renewed`, {
      hint: 'log in again: broker login (logins are now rotated and revocable; the old one is replaced)',
    });
  }
  const l = r.login;
  if (r.v !== 2 || r.serverUrl !== serverUrl || typeof r.developer !== 'string' || typeof r.refreshToken !== 'string'
    || typeof l !== 'object' || l === null || typeof l.id !== 'string' || typeof l.generation !== 'number' || typeof l.expiresAt !== 'string') {
    throw corrupt(serverUrl);
  }
  return r as unknown as LoginRecord;
}

/** The device key's private JWK, or null when there is none. */
export async function loadDeviceKey(serverUrl: string): Promise<JWK | null> {
  const raw = await keychainGet(deviceKeyAccount(serverUrl));
  if (raw === null) return null;
  try {
    const jwk = JSON.parse(raw) as unknown;
    if (typeof jwk === 'object' && jwk !== null && !Array.isArray(jwk)) return jwk as JWK;
  } catch { /* below */ }
  throw corrupt(serverUrl);
}

/** Removes both items (and a v1 one, which shares the record's account); false when there was neither. */
export async function deleteLogin(serverUrl: string): Promise<boolean> {
  const record = await keychainDelete(keychainAccount(serverUrl));
  const key = await keychainDelete(deviceKeyAccount(serverUrl));
  return record || key;
}

function corrupt(serverUrl: string): BrokerError {
  // Never quote the entry: it holds the refresh token or the key.
  return new BrokerError('not_logged_in', `the keychain entry of the login to ${serverUrl} is not one this broker wrote`, {
    hint: 'log in again: broker login',
  });
}
