/**
 * A thin Vault/OpenBao HTTP client on Node's own `fetch`, chosen over node-vault 0.12 on purpose:
 *
 * - node-vault's `tokenCreate*` and `jwtLogin` replace the client's own token with the new one
 *   (commands marked `tokenSource` in its `src/commands.js`; `client.token = …` in `src/index.js`),
 *   and its `tokenCreate*` drop fields outside their schema (`extendOptions` sends only the schema's
 *   keys): one shared client would end up acting with a task's token. Here every call names the token it uses; nothing is implicit.
 * - node-vault logs request bodies (`debug(options.json)`, with DEBUG=node-vault), which for AppRole
 *   and JWT logins hold the broker's credentials, and its axios errors carry the request config,
 *   headers (`X-Vault-Token`) included, into whatever logs the error.
 * - The broker needs eight endpoints. With fetch each one has a timeout (AbortSignal), every failure
 *   becomes one BrokerError carrying Vault's HTTP status and Vault's own `errors` text, and nothing a
 *   request carried (token, secret_id, jwt) can reach an error message: the message is built from
 *   the method, the path and Vault's answer only, and scrubbed of the request's secrets besides.
 */
import { BrokerError } from '../errors.js';

export interface VaultHttpOptions {
  /** e.g. https://vault.example.com:8200 (no trailing /v1). */
  address: string;
  /** Vault Enterprise / OpenBao namespace, sent as X-Vault-Namespace. */
  namespace?: string | undefined;
  timeoutMs: number;
  /** Told of every call: its operation, whether Vault answered with success, and how long it took. */
  observe?: ((operation: VaultOperation, ok: boolean, seconds: number) => void) | undefined;
}

/** What a call does, for metrics: a closed set (the path holds role and mount names, which are not). */
export type VaultOperation =
  | 'token_create' | 'token_revoke_accessor' | 'token_lookup_accessor' | 'token_role_read'
  | 'token_lookup_self' | 'token_renew_self' | 'login';

/**
 * Vault could not be reached, or did not answer in time; the BrokerError's `cause`. `outcomeUnknown`
 * says whether the request may have reached Vault and been carried out anyway: a refused connection
 * or an unknown host means it never left, but after a timeout or a connection reset mid-request the
 * broker cannot know (Vault may have committed a token create and lost only the answer).
 */
export class VaultUnreachableError extends Error {
  override readonly name = 'VaultUnreachableError';
  constructor(readonly reason: string, readonly outcomeUnknown: boolean) {
    super(reason);
  }
}

/** Vault's answer to a failed request, kept as the BrokerError's `cause` (never holds a secret). */
export class VaultApiError extends Error {
  override readonly name = 'VaultApiError';
  constructor(readonly status: number, readonly errors: string[], readonly path: string) {
    super(`HTTP ${status} from ${path}: ${errors.join('; ') || '(no message)'}`);
  }
}

export interface VaultCall {
  method: 'GET' | 'POST';
  operation: VaultOperation;
  /** Below /v1/, e.g. `auth/token/create/broker-tasks`. */
  path: string;
  token?: string | undefined;
  body?: unknown;
  /** What the broker was doing, for the error message: "create a token with role broker-tasks". */
  what: string;
  /** Secrets in the body (secret_id, jwt) that must never reach an error message. */
  secrets?: string[];
}

/** Vault's success envelope; `auth` for logins and token creation, `data` for reads. */
export interface VaultResponse<D = Record<string, unknown>> {
  data?: D | null;
  auth?: VaultAuthBlock | null;
  warnings?: string[] | null;
}

export interface VaultAuthBlock {
  client_token: string;
  accessor: string;
  policies?: string[] | null;
  token_policies?: string[] | null;
  metadata?: Record<string, string> | null;
  lease_duration: number;
  renewable: boolean;
  num_uses?: number;
  orphan?: boolean;
}

const MAX_ERROR_CHARS = 500;
const REDIRECTED = 'redirected';

export class VaultHttp {
  readonly address: string;
  readonly namespace: string | undefined;

  constructor(private readonly options: VaultHttpOptions) {
    this.address = options.address.replace(/\/+$/, '');
    this.namespace = options.namespace;
  }

  /** One request; resolves with Vault's JSON (undefined for 204), or throws a BrokerError. */
  async call<D = Record<string, unknown>>(c: VaultCall): Promise<VaultResponse<D> | undefined> {
    const observe = this.options.observe;
    if (!observe) return this.send<D>(c);
    const start = performance.now();
    try {
      const r = await this.send<D>(c);
      observe(c.operation, true, (performance.now() - start) / 1000);
      return r;
    } catch (e) {
      observe(c.operation, false, (performance.now() - start) / 1000);
      throw e;
    }
  }

  private async send<D>(c: VaultCall): Promise<VaultResponse<D> | undefined> {
    const secrets = [c.token, ...(c.secrets ?? [])].filter((s): s is string => typeof s === 'string' && s.length > 0);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (c.token) headers['x-vault-token'] = c.token;
    if (this.namespace) headers['x-vault-namespace'] = this.namespace;
    if (c.body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(`${this.address}/v1/${c.path}`, {
        method: c.method,
        headers,
        body: c.body === undefined ? undefined : JSON.stringify(c.body),
        signal: AbortSignal.timeout(this.options.timeoutMs),
        redirect: 'error',
      });
    } catch (e) {
      // Only the failure's kind is kept: the fetch error is not carried along (nor logged) whole.
      const reason = networkReason(e, this.options.timeoutMs);
      if (reason === REDIRECTED) {
        // A standby redirects instead of handling the request: nothing was carried out.
        throw new BrokerError('upstream_error', `Vault at ${this.address} answered with a redirect, which the broker does not follow with its token: could not ${c.what}`, {
          cause: new VaultUnreachableError(reason, false), hint: 'point vault.address at the active node or at a load balancer in front of the cluster',
        });
      }
      throw new BrokerError('upstream_unavailable', `Vault at ${this.address} is unreachable (${reason}): could not ${c.what}`, {
        cause: new VaultUnreachableError(reason, !NEVER_SENT.has(reason)),
        hint: 'check that Vault is up and reachable from the broker at vault.address (service config)',
      });
    }
    const text = await res.text().catch(() => '');
    if (res.ok) {
      if (res.status === 204 || text === '') return undefined;
      try {
        return JSON.parse(text) as VaultResponse<D>;
      } catch {
        throw new BrokerError('upstream_error', `Vault answered ${res.status} to ${c.method} ${c.path} with something other than JSON: could not ${c.what}`);
      }
    }
    const errors = scrub(vaultErrors(text), secrets);
    const cause = new VaultApiError(res.status, errors, c.path);
    const said = errors.length ? errors.join('; ') : `HTTP ${res.status}`;
    // 503: sealed, or a standby without a leader; 429: rate limited; 502/504: a proxy in front of it.
    // All pass by themselves: nothing for the caller to fix.
    const code = res.status === 503 || res.status === 429 || res.status === 502 || res.status === 504 ? 'upstream_unavailable' : 'upstream_error';
    throw new BrokerError(code, `Vault refused to ${c.what} (HTTP ${res.status}): ${said}`, { cause });
  }
}

/**
 * Network failures that happen before a request is written, so Vault cannot have carried it out:
 * connection refused, name resolution, no route, TLS handshake (Node's `fetch` reports these as the
 * `cause.code` of its TypeError). Anything else (a timeout, a reset mid-request) leaves it unknown.
 */
const NEVER_SENT = new Set([
  'ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'UND_ERR_CONNECT_TIMEOUT', 'ERR_TLS_CERT_ALTNAME_INVALID',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'CERT_HAS_EXPIRED', 'ERR_SSL_WRONG_VERSION_NUMBER',
]);

/**
 * Whether the failed request may nevertheless have been carried out by Vault: no answer in time or a
 * connection lost mid-request, a 500 (Vault failed after it may have written), or a 502/504 from a
 * proxy in front of it (the proxy gave up waiting; Vault may not have). A 4xx, a 503 (sealed,
 * standby) or a 429 means Vault refused it before doing anything.
 */
export function outcomeUnknown(e: unknown): boolean {
  const cause = (e as { cause?: unknown } | undefined)?.cause;
  if (cause instanceof VaultUnreachableError) return cause.outcomeUnknown;
  if (cause instanceof VaultApiError) return cause.status === 500 || cause.status === 502 || cause.status === 504;
  return false;
}

/** The status Vault answered with, when `e` wraps a Vault error answer. */
export function vaultStatus(e: unknown): number | undefined {
  const cause = (e as { cause?: unknown } | undefined)?.cause;
  return cause instanceof VaultApiError ? cause.status : undefined;
}

function vaultErrors(text: string): string[] {
  try {
    const body = JSON.parse(text) as { errors?: unknown };
    if (Array.isArray(body.errors)) {
      return body.errors.filter((x): x is string => typeof x === 'string').map((x) => x.replace(/\s+/g, ' ').trim().slice(0, MAX_ERROR_CHARS));
    }
  } catch { /* not JSON: Vault always answers errors as {"errors": [...]}, so say nothing more */ }
  return [];
}

/** Belt and braces: Vault's error texts do not echo tokens, but nothing we sent may come back out. */
function scrub(messages: string[], secrets: string[]): string[] {
  return messages.map((m) => secrets.reduce((acc, s) => acc.split(s).join('[redacted]'), m));
}

function networkReason(e: unknown, timeoutMs: number): string {
  const err = e as { name?: string; cause?: { code?: unknown; name?: unknown; message?: unknown } };
  if (err.name === 'TimeoutError' || err.name === 'AbortError') return `no answer within ${timeoutMs} ms`;
  // fetch keeps custom headers across redirects, X-Vault-Token included, so redirects are refused
  // (`redirect: 'error'`); a standby node that cannot forward a request redirects to the active one.
  if (typeof err.cause?.message === 'string' && /redirect/i.test(err.cause.message)) return REDIRECTED;
  const code = err.cause?.code;
  if (typeof code === 'string' && /^[A-Z_]+$/.test(code)) return code;
  return typeof err.cause?.name === 'string' ? err.cause.name : 'network error';
}
