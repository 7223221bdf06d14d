import type { z } from 'zod';
import { BrokerApi, ServiceAnswer, activeSessions, type ApiRequester } from '../client/api.js';
import { dpopProof, importDpopKey, type DpopKey } from '../client/dpop-key.js';
import type { LoginRecord } from '../client/login-record.js';
import { BrokerError, isBrokerError } from '../errors.js';
import { authRefreshResponse, reissueCredentialsResponse, type ReissueCredentialsResponse, type SessionView } from '../wire/service-api.js';
import type { CredentialUpstream } from './credential-cache.js';

/** Renew the access token this long before it expires, so no request goes out with a dying one. */
const ACCESS_TOKEN_MARGIN_MS = 60_000;

/**
 * The daemon's connection to the broker service under the developer's login: trades the keychain's
 * refresh token (with a DPoP proof from the device key) for short access tokens, held in memory,
 * renewed once for all concurrent callers.
 */
export class ServiceClient implements CredentialUpstream, ApiRequester {
  private access: { token: string; expiresAt: number } | undefined;
  private renewing: Promise<string> | undefined;

  private constructor(readonly login: Omit<LoginRecord, 'dpopKey'>, private readonly key: DpopKey, private readonly now: () => number) {}

  static async fromLogin(record: LoginRecord, now: () => number = Date.now): Promise<ServiceClient> {
    let key: DpopKey;
    try {
      key = await importDpopKey(record.dpopKey);
    } catch {
      throw new BrokerError('not_logged_in', `the device key of the login to ${record.serverUrl} is unusable`, { hint: 'log in again: broker login' });
    }
    const { dpopKey: _key, ...login } = record;
    return new ServiceClient(login, key, now);
  }

  get serverUrl(): string {
    return this.login.serverUrl;
  }

  private async accessToken(force = false): Promise<string> {
    if (!force && this.access && this.access.expiresAt - ACCESS_TOKEN_MARGIN_MS > this.now()) return this.access.token;
    this.renewing ??= (async () => {
      const url = `${this.serverUrl}/v1/auth/refresh`;
      const r = await new BrokerApi(this.serverUrl).request(
        'POST', '/v1/auth/refresh', authRefreshResponse, { refresh_token: this.login.refreshToken }, { dpop: await dpopProof(this.key, 'POST', url) },
      );
      this.access = { token: r.access_token, expiresAt: this.now() + r.expires_in * 1000 };
      return r.access_token;
    })().finally(() => { this.renewing = undefined; });
    return this.renewing;
  }

  /** A request with a valid access token; one retry with a new one if the service says it is not. */
  async request<S extends z.ZodType>(method: string, path: string, schema: S, body?: unknown): Promise<z.output<S>> {
    try {
      return await new BrokerApi(this.serverUrl, await this.accessToken()).request(method, path, schema, body);
    } catch (e) {
      if (!isBrokerError(e) || e.code !== 'unauthenticated' || !this.access) throw e;
      this.access = undefined;
      return new BrokerApi(this.serverUrl, await this.accessToken(true)).request(method, path, schema, body);
    }
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

/**
 * The service reached, but its own upstream (STS) failed: say so in the developer's words. The
 * service's hint ("check aws.stsEndpoint") is for its operator; it stays in `cause`.
 */
function viaService(e: unknown, upstream: string): unknown {
  if (!isBrokerError(e) || !(e.cause instanceof ServiceAnswer)) return e;
  if (e.code !== 'upstream_unavailable' && e.code !== 'upstream_error') return e;
  return new BrokerError(e.code, `the broker service cannot get credentials from ${upstream}: ${e.message}`, { cause: e });
}
