/**
 * Decisions from a terminal: the service itself runs an OAuth device authorization (RFC 8628) at
 * the IdP for the person deciding, with `max_age` from the request and at most its age (OIDC Core §3.1.2.1; the IdP
 * re-authenticates a login older than that), keeps the device code in memory (never sent to the
 * client: only the user code and URI are), polls the token endpoint when the client polls (at most
 * once per `interval`, RFC 8628 §3.5), verifies the ID token and records the decision. The ID token
 * never leaves the service. In memory: a confirmation under way is lost with a restart (the client
 * starts a new one).
 */
import { randomBytes } from 'node:crypto';
import { BrokerError } from '../errors.js';
import type { IdTokenVerifier } from '../identity/id-token-verifier.js';
import type { Logger } from '../log.js';
import type { DecisionKind, StartRequest, StartRequests } from './start-requests.js';

export interface DeviceConfirmationsDeps {
  issuer: string;
  clientId: string;
  scopes: string;
  verifier: IdTokenVerifier;
  requests: StartRequests;
  log: Logger;
  fetchTimeoutMs?: number;
  now?: () => number;
}

export interface DeviceConfirmationStart {
  id: string;
  user_code: string;
  verification_uri: string;
  verification_uri_complete?: string | undefined;
  expires_in: number;
  interval: number;
}

export type ConfirmationStatus = 'pending' | 'done' | 'denied' | 'expired';

interface Pending {
  requestId: string;
  decision: DecisionKind;
  reason: string;
  deviceCode: string;
  intervalMs: number;
  expiresAt: number;
  startedAt: number;
  nextPollAt: number;
  /** Set once finished: what later polls answer. */
  final?: ConfirmationStatus;
}

/** Confirmations kept at most (oldest dropped first): bounds memory against a client starting many. */
const MAX_PENDING = 1000;

export class DeviceConfirmations {
  private readonly pending = new Map<string, Pending>();
  private endpoints: { device: string; token: string } | undefined;
  private readonly now: () => number;

  constructor(private readonly deps: DeviceConfirmationsDeps) {
    this.now = deps.now ?? Date.now;
  }

  private async discover(): Promise<{ device: string; token: string }> {
    if (this.endpoints) return this.endpoints;
    const url = `${this.deps.issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
    let doc: { issuer?: unknown; device_authorization_endpoint?: unknown; token_endpoint?: unknown };
    try {
      const res = await fetch(url, { redirect: 'error', signal: AbortSignal.timeout(this.deps.fetchTimeoutMs ?? 5000) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      doc = (await res.json()) as typeof doc;
    } catch (e) {
      throw new BrokerError('upstream_unavailable', `cannot read the IdP's discovery document at ${url}: ${(e as Error).message}`, { cause: e });
    }
    if (doc.issuer !== this.deps.issuer || typeof doc.device_authorization_endpoint !== 'string' || typeof doc.token_endpoint !== 'string') {
      throw new BrokerError('upstream_error', 'the IdP offers no device authorization (RFC 8628) for the issuer configured', { hint: 'confirm on the page instead' });
    }
    this.endpoints = { device: doc.device_authorization_endpoint, token: doc.token_endpoint };
    return this.endpoints;
  }

  private async post(url: string, form: Record<string, string>): Promise<{ status: number; body: Record<string, unknown> }> {
    try {
      const res = await fetch(url, { method: 'POST', body: new URLSearchParams(form), redirect: 'error', signal: AbortSignal.timeout(this.deps.fetchTimeoutMs ?? 5000) });
      const body = (await res.json().catch(() => ({}))) as Record<string, unknown>;
      return { status: res.status, body };
    } catch (e) {
      throw new BrokerError('upstream_unavailable', `the IdP could not be reached: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * Starts a device authorization for a decision on `r` (the bearer may see it; the decision is
   * the IdP login's, checked when it arrives).
   */
  async start(r: StartRequest, decision: DecisionKind, reason: string): Promise<DeviceConfirmationStart> {
    if (r.status !== 'pending') throw new BrokerError('conflict', `start request ${r.id} is ${r.status}: it takes no decisions`);
    const { device } = await this.discover();
    const startedAt = this.now();
    // The decision needs a login after the request was made (start-requests.ts): max_age is also at
    // most the request's age, so the IdP re-authenticates a session older than the request instead
    // of handing over a login the service would refuse. Under a second, prompt=login says it plainly
    // (OIDC Core §3.1.2.1) and max_age is sent as 1: some IdPs treat 0 as "no constraint", and
    // oidc-provider then leaves auth_time out of the ID token, which the decision needs.
    const maxAge = Math.max(0, Math.min(r.maxAgeSeconds, Math.floor((startedAt - r.createdAt) / 1000)));
    const form: Record<string, string> = { client_id: this.deps.clientId, scope: this.deps.scopes, max_age: String(Math.max(1, maxAge)) };
    if (maxAge === 0) form.prompt = 'login';
    const da = await this.post(device, form);
    if (da.status !== 200 || typeof da.body.device_code !== 'string' || typeof da.body.user_code !== 'string' || typeof da.body.verification_uri !== 'string') {
      this.deps.log.warn({ status: da.status, error: da.body.error }, 'device authorization at the IdP failed');
      throw new BrokerError('upstream_error', `the IdP refused the device authorization (${String(da.body.error ?? da.status)})`);
    }
    const expiresIn = typeof da.body.expires_in === 'number' && da.body.expires_in > 0 ? da.body.expires_in : 600;
    const interval = typeof da.body.interval === 'number' && da.body.interval > 0 ? da.body.interval : 5;
    const id = `cnf_${randomBytes(16).toString('base64url')}`;
    if (this.pending.size >= MAX_PENDING) this.pending.delete(this.pending.keys().next().value!);
    this.pending.set(id, {
      requestId: r.id, decision, reason, deviceCode: da.body.device_code, intervalMs: interval * 1000,
      expiresAt: startedAt + expiresIn * 1000, startedAt, nextPollAt: startedAt,
    });
    return {
      id, user_code: da.body.user_code, verification_uri: da.body.verification_uri,
      verification_uri_complete: typeof da.body.verification_uri_complete === 'string' ? da.body.verification_uri_complete : undefined,
      expires_in: expiresIn, interval,
    };
  }

  /**
   * One poll of a confirmation (driven by the client): asks the IdP at most once per interval;
   * when the person logged in, verifies their ID token and records the decision (which throws the
   * refusal, e.g. 403 for a requester approving their own request).
   */
  async poll(requestId: string, id: string): Promise<ConfirmationStatus> {
    const p = this.pending.get(id);
    if (!p || p.requestId !== requestId) throw new BrokerError('not_found', `no confirmation ${id} for start request ${requestId}`);
    if (p.final) return p.final;
    const now = this.now();
    if (now >= p.expiresAt) return this.finish(id, p, 'expired');
    if (now < p.nextPollAt) return 'pending';
    p.nextPollAt = now + p.intervalMs;
    const { token } = await this.discover();
    const t = await this.post(token, { grant_type: 'urn:ietf:params:oauth:grant-type:device_code', device_code: p.deviceCode, client_id: this.deps.clientId });
    if (t.status !== 200) {
      const error = String(t.body.error ?? '');
      if (error === 'authorization_pending') return 'pending';
      if (error === 'slow_down') { p.intervalMs += 5000; p.nextPollAt = now + p.intervalMs; return 'pending'; }
      if (error === 'access_denied') return this.finish(id, p, 'denied');
      if (error === 'expired_token') return this.finish(id, p, 'expired');
      this.deps.log.warn({ status: t.status, error }, 'device token request at the IdP failed');
      throw new BrokerError('upstream_error', `the IdP refused the device token request (${error || t.status})`);
    }
    const idToken = t.body.id_token;
    this.pending.delete(id);
    if (typeof idToken !== 'string') throw new BrokerError('upstream_error', 'the IdP answered without an ID token (is the openid scope configured?)');
    const verified = await this.deps.verifier.verify(idToken);
    await this.deps.requests.decide(p.requestId, { token: verified, loginStartedAt: p.startedAt, via: 'device' }, p.decision, p.reason);
    this.pending.set(id, { ...p, deviceCode: '', final: 'done' });
    return 'done';
  }

  private finish(id: string, p: Pending, status: ConfirmationStatus): ConfirmationStatus {
    this.pending.set(id, { ...p, deviceCode: '', final: status });
    return status;
  }
}
