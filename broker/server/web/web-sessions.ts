/**
 * The request page's web sessions: server-side, in memory, bounded, short-lived. The browser holds
 * only a random id in a cookie; who is logged in, the CSRF token and the logins under way stay here
 * (lost with a restart: people log in again). A web session proves nothing a decision can rest on:
 * each decision gets its own IdP login (oidc-login.ts).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Principal } from '../../identity/principal.js';
import type { DecisionKind } from '../../requests/start-requests.js';

/** What a decision button asked for, kept while its IdP login runs. */
export interface PendingDecision {
  requestId: string;
  decision: DecisionKind;
  reason: string;
}

/** One authorization request at the IdP under way (RFC 6749 §4.1, with PKCE: RFC 7636). */
export interface LoginFlow {
  /** The id in the flow cookie: binds the callback to the browser that began it. */
  id: string;
  webSessionId: string;
  state: string;
  nonce: string;
  codeVerifier: string;
  /** When the redirect to the IdP was made (a maxAge 0 decision needs a login after it). */
  startedAt: number;
  expiresAt: number;
  /** A same-origin path to go back to. */
  next: string;
  decision?: PendingDecision | undefined;
}

export interface WebSession {
  id: string;
  /** Sent in every form; compared in constant time on every POST. */
  csrf: string;
  createdAt: number;
  expiresAt: number;
  /** Who logged in last in this web session, to show pages to; undefined until a login. */
  principal?: Principal | undefined;
}

export interface WebSessionsOptions {
  /** Absolute lifetime of a web session (no sliding: a page left open does not stay logged in). */
  ttlMs: number;
  /** How long a login at the IdP may take. */
  flowTtlMs: number;
  /** Web sessions (and, separately, flows) kept at most: the oldest go first. */
  max: number;
  /** The cookies get `Secure` (false only for a plain-http public URL on loopback). */
  secure: boolean;
  now?: () => number;
}

/**
 * `__Host-` (RFC 6265bis §4.1.3.2): the browser accepts it only with Secure, Path=/ and no Domain,
 * so no sibling host can plant it; the flow cookie has a narrower path, so `__Secure-` only. Plain
 * http (loopback development) can use neither prefix.
 */
export function cookieNames(secure: boolean): { session: string; flow: string } {
  return secure ? { session: '__Host-broker-page', flow: '__Secure-broker-login' } : { session: 'broker-page', flow: 'broker-login' };
}

const newId = () => randomBytes(32).toString('base64url');

export class WebSessions {
  private readonly sessions = new Map<string, WebSession>();
  private readonly flows = new Map<string, LoginFlow>();
  private readonly now: () => number;
  readonly names: { session: string; flow: string };

  constructor(private readonly opts: WebSessionsOptions) {
    this.now = opts.now ?? Date.now;
    this.names = cookieNames(opts.secure);
  }

  /** The live web session of this cookie value, if any. */
  get(id: string | undefined): WebSession | undefined {
    if (!id) return undefined;
    const s = this.sessions.get(id);
    if (!s) return undefined;
    if (s.expiresAt <= this.now()) { this.sessions.delete(id); return undefined; }
    return s;
  }

  create(): WebSession {
    const now = this.now();
    const s: WebSession = { id: newId(), csrf: newId(), createdAt: now, expiresAt: now + this.opts.ttlMs };
    bounded(this.sessions, this.opts.max);
    this.sessions.set(s.id, s);
    return s;
  }

  /** After a login: a new id and CSRF token (no fixation of an id planted before the login). */
  loggedIn(old: WebSession | undefined, principal: Principal): WebSession {
    if (old) this.sessions.delete(old.id);
    const s = this.create();
    s.principal = principal;
    return s;
  }

  /** True when `token` is this web session's CSRF token; constant time (RFC 9700 §4.7 wants CSRF defence). */
  csrfOk(s: WebSession, token: string | undefined): boolean {
    if (typeof token !== 'string' || token.length === 0) return false;
    // Digests of both: equal lengths for timingSafeEqual, and the token's length is not leaked.
    const a = createHash('sha256').update(token).digest();
    const b = createHash('sha256').update(s.csrf).digest();
    return timingSafeEqual(a, b);
  }

  beginFlow(s: WebSession, init: Omit<LoginFlow, 'id' | 'webSessionId' | 'startedAt' | 'expiresAt'>): LoginFlow {
    const now = this.now();
    const f: LoginFlow = { ...init, id: newId(), webSessionId: s.id, startedAt: now, expiresAt: now + this.opts.flowTtlMs };
    bounded(this.flows, this.opts.max);
    this.flows.set(f.id, f);
    return f;
  }

  /** The flow of this flow cookie, removed: each callback is answered once. */
  takeFlow(id: string | undefined): LoginFlow | undefined {
    if (!id) return undefined;
    const f = this.flows.get(id);
    this.flows.delete(id);
    if (!f || f.expiresAt <= this.now()) return undefined;
    return f;
  }

  sessionCookie(s: WebSession): string {
    return this.cookie(this.names.session, s.id, 'Strict', '/', Math.floor(this.opts.ttlMs / 1000));
  }

  /**
   * The flow cookie is SameSite=Lax, on the callback path only: the IdP's redirect back is a
   * cross-site top-level GET whenever the IdP is another site, and a Strict cookie is not sent on it.
   */
  flowCookie(f: LoginFlow): string {
    return this.cookie(this.names.flow, f.id, 'Lax', '/requests/callback', Math.floor(this.opts.flowTtlMs / 1000));
  }

  clearFlowCookie(): string {
    return this.cookie(this.names.flow, '', 'Lax', '/requests/callback', 0);
  }

  private cookie(name: string, value: string, sameSite: 'Strict' | 'Lax', path: string, maxAge: number): string {
    return `${name}=${value}; HttpOnly; SameSite=${sameSite}; Path=${path}; Max-Age=${maxAge}${this.opts.secure ? '; Secure' : ''}`;
  }
}

/** Drops the oldest entries (Map keeps insertion order) until one more fits. */
function bounded<V>(m: Map<string, V>, max: number): void {
  while (m.size >= max) m.delete(m.keys().next().value!);
}
