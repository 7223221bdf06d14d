import { BrokerError, isErrorCode, type ErrorDetail } from '../errors.js';
import { keychainGet } from '../keychain.js';
import { requireCliConfig } from './cli-config.js';

/** Keychain account under which the refresh token for a given service URL is kept. */
export function keychainAccount(serverUrl: string): string {
  return `refresh-token:${serverUrl}`;
}

/** Bounded: Go SDK v2 kills credential_process after a minute and JS/Python wait forever (FACTS.md). */
const REQUEST_TIMEOUT_MS = 15_000;

/** A thin HTTP client for the broker service; server errors come back as the same BrokerError. */
export class BrokerApi {
  constructor(readonly baseUrl: string, private readonly accessToken?: string) {}

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${this.baseUrl}${path}`, {
        method,
        headers: {
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...(this.accessToken ? { authorization: `Bearer ${this.accessToken}` } : {}),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (e) {
      throw new BrokerError('upstream_unavailable', `cannot reach the broker service at ${this.baseUrl}`, {
        cause: e, hint: 'check the URL (broker login --server …) and that the service is running',
      });
    }
    let data: unknown;
    try {
      data = await res.json();
    } catch {
      throw new BrokerError('upstream_error', `the broker service answered ${res.status} without JSON`);
    }
    if (!res.ok) {
      const d = data as { code?: unknown; message?: unknown; hint?: unknown; details?: unknown };
      const code = isErrorCode(d.code) ? d.code : 'upstream_error';
      const message = typeof d.message === 'string' ? d.message : `the broker service answered ${res.status}`;
      const hint = typeof d.hint === 'string' ? d.hint : code === 'unauthenticated' ? 'run: broker login' : undefined;
      throw new BrokerError(code, message, { ...(hint ? { hint } : {}), ...(Array.isArray(d.details) ? { details: d.details as ErrorDetail[] } : {}) });
    }
    return data as T;
  }
}

/** Trades the keychain's refresh token for a fresh access token; nothing is cached on disk. */
export async function authenticatedApi(): Promise<BrokerApi> {
  const { serverUrl } = requireCliConfig();
  const refreshToken = await keychainGet(keychainAccount(serverUrl));
  if (!refreshToken) {
    throw new BrokerError('not_logged_in', `not logged in to ${serverUrl}`, { hint: 'run: broker login' });
  }
  const r = await new BrokerApi(serverUrl).request<{ access_token: string }>('POST', '/v1/auth/refresh', { refresh_token: refreshToken });
  return new BrokerApi(serverUrl, r.access_token);
}

export interface TemplateSummary {
  name: string;
  description: string;
  region: string | null;
  /** What a session of it grants; absent from services older than Vault support (AWS only). */
  grants?: ('aws' | 'vault')[];
  parameters: Record<string, { description: string; maxLength: number }>;
  maxSessionSeconds: number;
  credentialLifetimeSeconds: number;
}

export interface SessionView {
  id: string; template: string; params: Record<string, string>; reason: string; agent: string;
  roleSessionName: string; region: string | null;
  /** Where the session's Vault tokens are valid, or null when it grants none. */
  vault?: { address: string; namespace: string | null; policies: string[] } | null;
  createdAt: string; expiresAt: string;
}

/**
 * The `vault` object of `POST /v1/sessions` (when the template grants a Vault token) and of
 * `POST /v1/sessions/:id/vault-token`. `token` is a secret: keep it in memory; renew it in place with
 * renewVaultToken (broker/vault/renew.ts) and ask for a fresh one when that fails.
 */
export interface VaultTokenGrant {
  token: string;
  /** Identifies the token in Vault's audit log and the broker's; safe to log. */
  accessor: string;
  policies: string[];
  ttlSeconds: number;
  /** RFC 3339; when the token expires unless renewed. */
  expiresAt: string;
  /** RFC 3339; its explicit max TTL, never after the session's end. */
  maxExpiresAt: string;
  renewable: boolean;
  /** 0: unlimited; every request with the token (renewal included) uses one. */
  numUses: number;
  address: string;
  namespace?: string;
}

/** `POST /v1/sessions` (201): what the template grants. */
export interface StartedSession {
  session: SessionView;
  credentials?: ProcessCredentials;
  vault?: VaultTokenGrant;
}

/** `DELETE /v1/sessions/:id`: the ended session and what became of its Vault tokens. */
export interface EndedSessionResponse {
  ended: SessionView;
  vaultTokens: { accessor: string; revoked: boolean; error?: string }[];
}

export interface ProcessCredentials {
  Version: 1; AccessKeyId: string; SecretAccessKey: string; SessionToken: string; Expiration: string; AccountId?: string;
}

export async function listStartableTemplates(): Promise<TemplateSummary[]> {
  const api = await authenticatedApi();
  return (await api.request<{ templates: TemplateSummary[] }>('GET', '/v1/templates')).templates;
}

export async function activeSessions(api: BrokerApi): Promise<SessionView[]> {
  return (await api.request<{ sessions: SessionView[] }>('GET', '/v1/sessions')).sessions;
}

export async function activeSessionFor(api: BrokerApi, template: string): Promise<SessionView> {
  const s = (await activeSessions(api)).find((x) => x.template === template);
  if (!s) {
    throw new BrokerError('not_found', `no active "${template}" task session`, { hint: `start one: broker task ${template}` });
  }
  return s;
}

/** A fresh Vault token under an active session, for when renewing the one held fails. */
export async function freshVaultToken(api: BrokerApi, sessionId: string): Promise<{ session: SessionView; vault: VaultTokenGrant }> {
  return api.request('POST', `/v1/sessions/${encodeURIComponent(sessionId)}/vault-token`);
}
