import type { z } from 'zod';
import { BrokerError, isErrorCode } from '../errors.js';
import { brokerUrlProblem, shownUrl } from '../limits/urls.js';
import { firstIssue } from '../wire/json-pointer.js';
import {
  confirmationRequiredBody, errorBody, sessionsResponse, vaultTokenResponse, type ConfirmationRequiredBody, type SessionView, type VaultTokenResponse,
} from '../wire/service-api.js';

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

/**
 * The `cause` of a `confirmation_required` error: a start that waits for a human, with the pending
 * request the service made. The service answers it with 401 and `WWW-Authenticate: Bearer
 * error="insufficient_user_authentication"` (RFC 9470 §3) for the requester's own step-up, or 202
 * when approvers are needed: either way no session, and nothing wrong with the access token (so
 * nobody may take this 401 for an expired one and refresh: ServiceClient retries `unauthenticated`
 * only).
 */
export class ConfirmationRequired {
  constructor(readonly status: 401 | 202, readonly body: ConfirmationRequiredBody) {}
}

export function confirmationRequiredOf(e: unknown): ConfirmationRequired | undefined {
  return e instanceof BrokerError && e.code === 'confirmation_required' && e.cause instanceof ConfirmationRequired ? e.cause : undefined;
}

/**
 * A thin HTTP client for the broker service. Every answer is checked against its schema
 * (wire/service-api.ts) where it is received: what does not match is an `upstream_error` naming the
 * request and the first place that differs, never passed on unchecked. Server errors come back as
 * the same BrokerError.
 */
export class BrokerApi {
  constructor(readonly baseUrl: string, private readonly accessToken?: string) {}

  async request<S extends z.ZodType>(method: string, path: string, schema: S, body?: unknown, headers: Record<string, string> = {}): Promise<z.output<S>> {
    // Every source of the URL checks it (broker/client/cli-config.ts); this is the backstop, since
    // every request carries a token or returns one.
    const problem = brokerUrlProblem(this.baseUrl);
    if (problem) throw new BrokerError('invalid_config', `the broker service URL ${shownUrl(this.baseUrl) ?? ''} ${problem.problem}`, { hint: problem.fix });
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
        // Never followed: fetch re-sends the body of a 307/308 (a refresh token, an ID token) and
        // keeps custom headers (the DPoP proof) on any redirect, to wherever Location says, over
        // plain http too (the Fetch standard, "HTTP-redirect fetch"). `manual` rather than `error`:
        // Node's fetch then hands over the 3xx itself, so the error can name where it pointed.
        redirect: 'manual',
      });
    } catch (e) {
      throw new BrokerError('upstream_unavailable', `cannot reach the broker service at ${this.baseUrl}`, {
        cause: e, hint: 'check the URL (broker login --server …) and that the service is running',
      });
    }
    if (res.status >= 300 && res.status < 400) {
      await res.body?.cancel().catch(() => { /* nothing of it is read */ });
      throw redirected(res, `${this.baseUrl}${path}`);
    }
    let data: unknown;
    try {
      data = await res.json();
    } catch {
      throw new BrokerError('upstream_error', `the broker service answered ${res.status} without JSON`);
    }
    if ((res.status === 401 || res.status === 202) && isConfirmationRequired(data)) {
      const body = confirmationRequiredBody.safeParse(data);
      if (!body.success) throw unexpectedAnswer(`${method} ${path} (HTTP ${res.status})`, body.error);
      throw new BrokerError('confirmation_required', body.data.message, {
        cause: new ConfirmationRequired(res.status, body.data), ...(body.data.hint ? { hint: body.data.hint } : {}),
      });
    }
    if (!res.ok) throw serviceError(res.status, data, `${method} ${path}`);
    const parsed = schema.safeParse(data);
    if (!parsed.success) throw unexpectedAnswer(`${method} ${path}`, parsed.error);
    return parsed.data;
  }
}

function isConfirmationRequired(data: unknown): boolean {
  return typeof data === 'object' && data !== null && (data as { code?: unknown }).code === 'confirmation_required';
}

/**
 * A 3xx from the broker service. Only the origin of its Location is shown: a path or query may
 * carry anything (a redirect can be made to echo the request).
 */
function redirected(res: Response, requestUrl: string): BrokerError {
  let where: string | undefined;
  const location = res.headers.get('location');
  try {
    const loc = location ? new URL(location, requestUrl) : undefined;
    if (loc) where = loc.origin === 'null' ? loc.protocol : loc.origin;
  } catch { /* no usable Location */ }
  return new BrokerError('upstream_error', where
    ? `the broker service answered with a redirect to ${where}; refusing to follow it with credentials`
    : `the broker service answered HTTP ${res.status} (a redirect); refusing to follow it with credentials`, {
    // No ServiceAnswer cause: this is not the service reporting a failure of its own upstream.
    hint: 'use the URL the service is really at (https, its own host and path), e.g. broker login --server https://broker.example.com; '
      + 'or ask its operator why it redirects',
  });
}

/** The service's error answer as the same BrokerError (its code, message, hint and details). */
function serviceError(status: number, data: unknown, request: string): BrokerError {
  const parsed = errorBody.safeParse(data);
  if (!parsed.success) throw unexpectedAnswer(`${request} (HTTP ${status})`, parsed.error);
  const d = parsed.data;
  // A code this CLI does not know (a newer service): an upstream error, with the service's message.
  const code = isErrorCode(d.code) ? d.code : 'upstream_error';
  const hint = d.hint ?? (code === 'unauthenticated' ? 'run: broker login' : undefined);
  return new BrokerError(code, d.message, {
    cause: new ServiceAnswer(status), ...(hint ? { hint } : {}), ...(d.details ? { details: d.details } : {}),
  });
}

/**
 * An answer that does not match the contract: where it differs and how (zod's message names the
 * expected type or format), never what it holds, which may be a secret.
 */
function unexpectedAnswer(request: string, error: z.ZodError): BrokerError {
  return new BrokerError('upstream_error', `the broker service sent an unexpected answer to ${request} (${firstIssue(error)})`, {
    hint: 'the broker CLI and service may be different versions: update the CLI, or ask the service\'s operator',
  });
}

/** Anything that can make an API request: a BrokerApi, or the daemon's token-renewing client. */
export interface ApiRequester {
  request<S extends z.ZodType>(method: string, path: string, schema: S, body?: unknown): Promise<z.output<S>>;
}

export async function activeSessions(api: ApiRequester): Promise<SessionView[]> {
  return (await api.request('GET', '/v1/sessions', sessionsResponse)).sessions;
}

/** A fresh Vault token under an active session, for when renewing the one held fails. */
export function freshVaultToken(api: ApiRequester, sessionId: string): Promise<VaultTokenResponse> {
  return api.request('POST', `/v1/sessions/${encodeURIComponent(sessionId)}/vault-token`, vaultTokenResponse);
}
