import { BrokerError, isErrorCode, type ErrorDetail } from '../errors.js';

/**
 * Bounded: Go SDK v2 kills credential_process after a minute (aws-sdk-go-v2
 * `credentials/processcreds`, `DefaultTimeout`), and the JS and Python SDKs wait forever.
 */
const REQUEST_TIMEOUT_MS = 15_000;

/**
 * The `cause` of an error the broker service answered with, as opposed to one raised because it could
 * not be reached: its message and hint were written by (and for) the service's side.
 */
export class ServiceAnswer {
  constructor(readonly status: number) {}
}

/** A thin HTTP client for the broker service; server errors come back as the same BrokerError. */
export class BrokerApi {
  constructor(readonly baseUrl: string, private readonly accessToken?: string) {}

  async request<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${this.baseUrl}${path}`, {
        method,
        headers: {
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...(this.accessToken ? { authorization: `Bearer ${this.accessToken}` } : {}),
          ...headers,
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
      throw new BrokerError(code, message, {
        cause: new ServiceAnswer(res.status), ...(hint ? { hint } : {}), ...(Array.isArray(d.details) ? { details: d.details as ErrorDetail[] } : {}),
      });
    }
    return data as T;
  }
}

export interface TemplateSummary {
  name: string;
  description: string;
  region: string | null;
  /** What a session of it grants; absent from services older than Vault support (AWS only). */
  grants?: ('aws' | 'vault')[];
  parameters: Record<string, { description: string; pattern: string; maxLength: number }>;
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

/** Anything that can make an API request: a BrokerApi, or the daemon's token-renewing client. */
export interface ApiRequester {
  request<T>(method: string, path: string, body?: unknown): Promise<T>;
}

export async function activeSessions(api: ApiRequester): Promise<SessionView[]> {
  return (await api.request<{ sessions: SessionView[] }>('GET', '/v1/sessions')).sessions;
}

/** A fresh Vault token under an active session, for when renewing the one held fails. */
export async function freshVaultToken(api: ApiRequester, sessionId: string): Promise<{ session: SessionView; vault: VaultTokenGrant }> {
  return api.request('POST', `/v1/sessions/${encodeURIComponent(sessionId)}/vault-token`);
}
