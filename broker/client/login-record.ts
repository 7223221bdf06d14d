import type { JWK } from 'jose';
import { BrokerError } from '../errors.js';
import { keychainDelete, keychainGet, keychainSet } from '../keychain.js';

/**
 * A developer's broker login, as kept in the OS keychain: the refresh token and the device key it is
 * bound to (DPoP, RFC 9449), in ONE entry so the daemon reads the keychain once per start (on macOS
 * every entry read can raise a prompt; aws-vault#211/#745). Never written anywhere else.
 */
export interface LoginRecord {
  v: 1;
  serverUrl: string;
  developer: string;
  refreshToken: string;
  /** The private EC P-256 JWK of the device key. */
  dpopKey: JWK;
}

export function keychainAccount(serverUrl: string): string {
  return `login:${serverUrl}`;
}

export async function saveLogin(r: LoginRecord): Promise<void> {
  await keychainSet(keychainAccount(r.serverUrl), JSON.stringify(r));
}

/** The stored login for this service, or null when there is none (or it is unreadable: log in again). */
export async function loadLogin(serverUrl: string): Promise<LoginRecord | null> {
  const raw = await keychainGet(keychainAccount(serverUrl));
  if (raw === null) return null;
  let r: Partial<LoginRecord>;
  try {
    r = JSON.parse(raw) as Partial<LoginRecord>;
  } catch {
    throw corrupt(serverUrl);
  }
  if (r.v !== 1 || r.serverUrl !== serverUrl || typeof r.developer !== 'string' || typeof r.refreshToken !== 'string'
    || typeof r.dpopKey !== 'object' || r.dpopKey === null) {
    throw corrupt(serverUrl);
  }
  return r as LoginRecord;
}

export function deleteLogin(serverUrl: string): Promise<boolean> {
  return keychainDelete(keychainAccount(serverUrl));
}

function corrupt(serverUrl: string): BrokerError {
  // Never quote the entry: it holds the refresh token.
  return new BrokerError('not_logged_in', `the keychain entry of the login to ${serverUrl} is not one this broker wrote`, {
    hint: 'log in again: broker login',
  });
}
