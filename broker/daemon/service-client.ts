import type { JWK } from 'jose';
import type { z } from 'zod';
import { BrokerApi, ServiceAnswer, activeSessions, type ApiRequester } from '../client/api.js';
import { dpopProof, importDpopKey, type DpopKey } from '../client/dpop-key.js';
import { loadDeviceKey, loadLogin, saveLogin, type LoginRecord } from '../client/login-record.js';
import { BrokerError, isBrokerError } from '../errors.js';
import type { Logger } from '../log.js';
import { authRefreshResponse, reissueCredentialsResponse, type ReissueCredentialsResponse, type SessionView } from '../wire/service-api.js';
import type { CredentialUpstream } from './credential-cache.js';

/** Renew the access token this long before it expires, so no request goes out with a dying one. */
const ACCESS_TOKEN_MARGIN_MS = 60_000;

/** Where the login is kept (the OS keychain, client/login-record.ts). */
export interface LoginKeychain {
  load(serverUrl: string): Promise<LoginRecord | null>;
  loadDeviceKey(serverUrl: string): Promise<JWK | null>;
  save(record: LoginRecord): Promise<void>;
}

const osKeychain: LoginKeychain = { load: loadLogin, loadDeviceKey, save: saveLogin };

export interface ServiceClientOptions {
  now?: () => number;
  log?: Logger;
  keychain?: LoginKeychain;
  /**
   * The keychain holds another login than this client's (`broker login` or `logout` in another
   * session, another runtime directory): called with the login adopted, or null when there is none.
   */
  onLoginChanged?: (now: LoginRecord | null, before: LoginRecord) => void;
}

/**
 * The daemon's connection to the broker service under the developer's login: trades the refresh
 * token (with a DPoP proof from the device key) for short access tokens, held in memory, renewed
 * once for all concurrent callers (single flight).
 *
 * The service rotates the refresh token at every refresh and revokes the login when a spent one comes
 * back (RFC 9700 §4.14.2). So, at every refresh:
 * - first the keychain is read again: another daemon of this developer (another runtime directory)
 *   may have rotated the token since; a higher generation of the same login is taken over, and a
 *   different login (a `broker login` elsewhere) is adopted whole, device key included;
 * - the new refresh token is written to the keychain before the new access token is used, so a
 *   daemon that crashes after that finds the live token when it starts again. What stays is the
 *   moment between the service's answer and the keychain write: a crash exactly then leaves the
 *   keychain with a spent token, and the next start trips reuse detection (log in again).
 */
export class ServiceClient implements CredentialUpstream, ApiRequester {
  private access: { token: string; expiresAt: number } | undefined;
  private renewing: Promise<string> | undefined;
  private readonly now: () => number;
  private readonly keychain: LoginKeychain;

  private constructor(private record: LoginRecord, private key: DpopKey, private readonly opts: ServiceClientOptions) {
    this.now = opts.now ?? Date.now;
    this.keychain = opts.keychain ?? osKeychain;
  }

  /** A client for the login and device key read from the keychain (the device key's JWK is imported non-extractable and dropped). */
  static async fromLogin(record: LoginRecord, deviceKey: JWK, opts: ServiceClientOptions = {}): Promise<ServiceClient> {
    return new ServiceClient(record, await importKey(record.serverUrl, deviceKey), opts);
  }

  /** The login, without its refresh token. */
  get login(): Omit<LoginRecord, 'refreshToken'> {
    const { refreshToken: _secret, ...login } = this.record;
    return login;
  }

  get serverUrl(): string {
    return this.record.serverUrl;
  }

  private async accessToken(force = false): Promise<string> {
    if (!force && this.access && this.access.expiresAt - ACCESS_TOKEN_MARGIN_MS > this.now()) return this.access.token;
    this.renewing ??= this.renew().finally(() => { this.renewing = undefined; });
    return this.renewing;
  }

  private async renew(): Promise<string> {
    await this.catchUpWithKeychain();
    const url = `${this.serverUrl}/v1/auth/refresh`;
    const r = await new BrokerApi(this.serverUrl).request(
      'POST', '/v1/auth/refresh', authRefreshResponse, { refresh_token: this.record.refreshToken }, { dpop: await dpopProof(this.key, 'POST', url) },
    );
    // A service older than rotation sends no new refresh token: the one held stays valid.
    if (r.refresh_token && r.login) {
      const next: LoginRecord = { ...this.record, refreshToken: r.refresh_token, login: r.login };
      this.record = next;
      await this.writeBack(next);
    }
    this.access = { token: r.access_token, expiresAt: this.now() + r.expires_in * 1000 };
    return r.access_token;
  }

  /** Takes over what another daemon (or `broker login`) wrote to the keychain since this client last looked. */
  private async catchUpWithKeychain(): Promise<void> {
    let stored: LoginRecord | null;
    try {
      stored = await this.keychain.load(this.serverUrl);
    } catch (e) {
      // No keychain now (locked, its daemon gone): the login in memory still works.
      this.opts.log?.warn({ err: (e as Error).message }, 'could not read the login from the keychain before a refresh; using the one in memory');
      return;
    }
    const mine = this.record;
    if (stored === null) {
      this.opts.onLoginChanged?.(null, mine);
      throw new BrokerError('not_logged_in', `not logged in to ${this.serverUrl} (the login was removed from the keychain)`, { hint: 'run: broker login' });
    }
    if (stored.login.id === mine.login.id) {
      if (stored.login.generation > mine.login.generation) {
        this.record = stored;
        this.opts.log?.info({ login: stored.login.id, generation: stored.login.generation }, 'took over the refresh token another daemon rotated');
      }
      return;
    }
    const jwk = await this.keychain.loadDeviceKey(this.serverUrl).catch(() => null);
    if (!jwk) throw new BrokerError('not_logged_in', `the login to ${this.serverUrl} in the keychain has no device key`, { hint: 'log in again: broker login' });
    this.key = await importKey(this.serverUrl, jwk);
    this.record = stored;
    this.access = undefined;
    this.opts.log?.info({ developer: stored.developer, login: stored.login.id }, 'adopted the login another session stored in the keychain');
    this.opts.onLoginChanged?.(stored, mine);
  }

  /**
   * Stores the rotated refresh token, over the same login only: a newer login in the keychain (a
   * `broker login` meanwhile) is never overwritten with this one.
   */
  private async writeBack(next: LoginRecord): Promise<void> {
    try {
      const stored = await this.keychain.load(this.serverUrl);
      if (stored === null || stored.login.id !== next.login.id || stored.login.generation >= next.login.generation) return;
      await this.keychain.save(next);
    } catch (e) {
      // The daemon keeps working with the token in memory; a restart before the next successful
      // write would present a spent token (reuse detected: log in again).
      this.opts.log?.error({ err: (e as Error).message, login: next.login.id }, 'could not store the rotated refresh token in the keychain');
    }
  }

  /**
   * A request with a valid access token; one retry with a new one if the service says it is not. A
   * refresh that fails is reported as it is (e.g. reuse detected), not retried.
   */
  async request<S extends z.ZodType>(method: string, path: string, schema: S, body?: unknown): Promise<z.output<S>> {
    const token = await this.accessToken();
    try {
      return await new BrokerApi(this.serverUrl, token).request(method, path, schema, body);
    } catch (e) {
      if (!isBrokerError(e) || e.code !== 'unauthenticated' || !this.access) throw e;
      this.access = undefined;
      return new BrokerApi(this.serverUrl, await this.accessToken(true)).request(method, path, schema, body);
    }
  }

  /**
   * A request that is not retried on a 401: one whose 401 is about something else than the access
   * token, and which may not be sent twice. The poll of a device confirmation is one: when the IdP
   * login behind it is refused (not fresh enough), the service answers `unauthenticated` and has
   * spent the confirmation, so a retry would only find it gone. The token is renewed ahead of its
   * expiry (ACCESS_TOKEN_MARGIN_MS), so it is valid here.
   */
  async requestOnce<S extends z.ZodType>(method: string, path: string, schema: S, body?: unknown): Promise<z.output<S>> {
    return new BrokerApi(this.serverUrl, await this.accessToken()).request(method, path, schema, body);
  }

  async findSession(template: string): Promise<SessionView | undefined> {
    return (await activeSessions(this)).find((s) => s.template === template);
  }

  sessions(): Promise<SessionView[]> {
    return activeSessions(this);
  }

  async issue(sessionId: string): Promise<ReissueCredentialsResponse> {
    try {
      return await this.request('POST', `/v1/sessions/${encodeURIComponent(sessionId)}/credentials`, reissueCredentialsResponse);
    } catch (e) {
      throw viaService(e, 'AWS STS');
    }
  }
}

async function importKey(serverUrl: string, jwk: JWK): Promise<DpopKey> {
  try {
    return await importDpopKey(jwk);
  } catch {
    throw new BrokerError('not_logged_in', `the device key of the login to ${serverUrl} is unusable`, { hint: 'log in again: broker login' });
  }
}

/**
 * The service reached, but its own upstream (STS) failed: say so in the developer's words. The
 * service's hint ("check aws.stsEndpoint") is for its operator; it stays in `cause`.
 */
function viaService(e: unknown, upstream: string): unknown {
  if (!isBrokerError(e) || !(e.cause instanceof ServiceAnswer)) return e;
  if (e.code !== 'upstream_unavailable' && e.code !== 'upstream_error') return e;
  return new BrokerError(e.code, `the broker service cannot get credentials from ${upstream}: ${e.message}`, { cause: e });
}
