/**
 * The broker's own Vault login: the token it creates, looks up and revokes task tokens with.
 * One of three methods (service config `vault:`):
 *
 * - `token`: a token handed to the broker (file or environment variable). For development; a token
 *   with the `root` policy is refused unless `allowRootToken: true`.
 * - `approle`: `POST auth/<mount>/login {role_id, secret_id}`; the secret_id from a file or env.
 * - `jwt`: `POST auth/<mount>/login {role, jwt}` with a short-lived JWT the broker signs about
 *   itself with its own signing key; Vault verifies it against the broker's `/.well-known/jwks.json`
 *   (JWT auth `jwks_url`), so the broker holds no Vault secret at all.
 *
 * Logins are lazy and cached until shortly before the token's lease ends; concurrent callers share
 * one login. The token is never logged: the accessor is what identifies it in logs.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { BrokerError, isBrokerError } from '../errors.js';
import type { Logger } from '../log.js';
import { vaultStatus, type VaultAuthBlock, type VaultHttp } from './http.js';
import { ROOT_POLICY } from '../limits/vault.js';

export type SecretSource = { file: string } | { env: string };

export type VaultAuthMethod =
  | { kind: 'token'; token: SecretSource }
  | { kind: 'approle'; roleId: string; secretId: SecretSource; mount: string }
  | { kind: 'jwt'; role: string; mount: string; audience: string };

export interface VaultAuthDeps {
  http: VaultHttp;
  method: VaultAuthMethod;
  /** Relative secret files are relative to the config file's directory. */
  baseDir: string;
  /** Development only: accept a broker token carrying the `root` policy. */
  allowRootToken: boolean;
  /** Signs the broker's own short-lived login JWT for Vault's JWT auth (BrokerTokens.signVaultLoginJwt). */
  signLoginJwt?: ((audience: string) => Promise<string>) | undefined;
  log: Logger;
  now?: () => number;
}

/** What Vault says about the broker's own token (`auth/token/lookup-self`); no secret in it. */
export interface BrokerVaultIdentity {
  accessor: string;
  policies: string[];
  /** Seconds left; 0 for a token that never expires (root tokens). */
  ttlSeconds: number;
  renewable: boolean;
  displayName: string;
}

interface Held {
  token: string;
  accessor: string;
  /** When to renew or log in again (a margin before the lease ends); null: never expires. */
  refreshAt: number | null;
}

/** Renew or log in again when this little of the lease is left (at least 30 s, or a tenth of it). */
const MIN_REFRESH_MARGIN_MS = 30_000;

export class VaultAuth {
  private held: Held | undefined;
  private pending: Promise<Held> | undefined;
  private rootWarned = false;
  private readonly now: () => number;

  constructor(private readonly deps: VaultAuthDeps) {
    this.now = deps.now ?? Date.now;
    if (deps.method.kind === 'jwt' && !deps.signLoginJwt) throw new TypeError('jwt auth needs signLoginJwt');
  }

  get method(): VaultAuthMethod['kind'] {
    return this.deps.method.kind;
  }

  /** Can a fresh login fix a 403 (a token revoked or expired under us)? Not with a fixed token. */
  get canLogInAgain(): boolean {
    return this.deps.method.kind !== 'token';
  }

  /** A token of the broker's own, checked (not root unless allowed) and not about to expire. */
  async token(): Promise<string> {
    const h = this.held;
    if (h && (h.refreshAt === null || this.now() < h.refreshAt)) return h.token;
    this.pending ??= this.acquire().finally(() => { this.pending = undefined; });
    return (await this.pending).token;
  }

  /** Forget `token` (Vault refused it), so the next call logs in again. */
  invalidate(token: string): void {
    if (this.held?.token === token) this.held = undefined;
  }

  /** `auth/token/lookup-self` with the broker's token: who Vault thinks the broker is. */
  async check(): Promise<BrokerVaultIdentity> {
    const token = await this.token();
    return this.lookupSelf(token);
  }

  private async acquire(): Promise<Held> {
    const m = this.deps.method;
    let held: Held;
    if (m.kind === 'token') {
      const token = readSecret(m.token, this.deps.baseDir, 'vault.token');
      const self = await this.lookupSelf(token);
      this.checkPolicies(self.policies, self.accessor);
      held = { token, accessor: self.accessor, refreshAt: this.refreshAt(self.ttlSeconds) };
      // A fixed token cannot log in again: renew it while it still can be (if Vault lets it).
      if (held.refreshAt !== null && self.renewable && this.now() >= held.refreshAt) held = await this.renewSelf(held);
    } else {
      const auth = m.kind === 'approle' ? await this.approleLogin(m) : await this.jwtLogin(m);
      held = { token: auth.client_token, accessor: auth.accessor, refreshAt: this.refreshAt(auth.lease_duration) };
      // Vault refuses to mint root tokens through auth methods; checked anyway, at no cost.
      this.checkPolicies(auth.token_policies ?? auth.policies ?? [], auth.accessor);
      this.deps.log.info({ method: m.kind, accessor: auth.accessor, ttlSeconds: auth.lease_duration }, 'logged in to Vault');
    }
    this.held = held;
    return held;
  }

  /** A tenth of the lease before it ends, at least 30 s before; null for a token without expiry. */
  private refreshAt(ttlSeconds: number): number | null {
    if (ttlSeconds <= 0) return null;
    return this.now() + ttlSeconds * 1000 - Math.max(MIN_REFRESH_MARGIN_MS, ttlSeconds * 100);
  }

  private checkPolicies(policies: string[], accessor: string): void {
    if (!policies.includes(ROOT_POLICY)) return;
    if (!this.deps.allowRootToken) {
      throw new BrokerError('invalid_config', `the broker's own Vault token (accessor ${accessor}) has the root policy; the broker refuses to run with it`, {
        hint: 'give the broker a token (or an AppRole/JWT role) with only the broker policy of deploy/vault/broker-policy.hcl; for local development only, set vault.allowRootToken: true',
      });
    }
    if (!this.rootWarned) {
      this.rootWarned = true;
      this.deps.log.warn({ accessor }, 'the broker is using a Vault token with the root policy (vault.allowRootToken: true): development only');
    }
  }

  private async lookupSelf(token: string): Promise<BrokerVaultIdentity> {
    let r;
    try {
      r = await this.deps.http.call<{ accessor?: string; policies?: string[]; ttl?: number; renewable?: boolean; display_name?: string }>({
        method: 'GET', operation: 'token_lookup_self', path: 'auth/token/lookup-self', token, what: "look up the broker's own token",
      });
    } catch (e) {
      if (vaultStatus(e) !== 403 || !isBrokerError(e)) throw e;
      throw new BrokerError(e.code, e.message, {
        cause: e.cause,
        hint: this.deps.method.kind === 'token' ? 'the token given in vault.token is invalid, expired or revoked' : "the broker's Vault login gave a token Vault no longer accepts",
      });
    }
    const d = r?.data ?? {};
    return {
      accessor: d.accessor ?? '', policies: d.policies ?? [], ttlSeconds: d.ttl ?? 0, renewable: d.renewable ?? false,
      displayName: d.display_name ?? '',
    };
  }

  private async renewSelf(h: Held): Promise<Held> {
    try {
      const r = await this.deps.http.call({ method: 'POST', operation: 'token_renew_self', path: 'auth/token/renew-self', token: h.token, body: {}, what: "renew the broker's own token" });
      return { ...h, refreshAt: this.refreshAt(r?.auth?.lease_duration ?? 0) };
    } catch (e) {
      this.deps.log.warn({ accessor: h.accessor, err: (e as Error).message }, "could not renew the broker's own Vault token");
      return h;
    }
  }

  private async approleLogin(m: Extract<VaultAuthMethod, { kind: 'approle' }>): Promise<VaultAuthBlock> {
    const secretId = readSecret(m.secretId, this.deps.baseDir, 'vault.approle.secretId');
    const r = await this.deps.http.call({
      method: 'POST', operation: 'login', path: `auth/${m.mount}/login`, body: { role_id: m.roleId, secret_id: secretId },
      secrets: [secretId], what: `log in with AppRole at auth/${m.mount}`,
    });
    return requireAuth(r?.auth, `auth/${m.mount}/login`);
  }

  private async jwtLogin(m: Extract<VaultAuthMethod, { kind: 'jwt' }>): Promise<VaultAuthBlock> {
    const jwt = await this.deps.signLoginJwt!(m.audience);
    const r = await this.deps.http.call({
      method: 'POST', operation: 'login', path: `auth/${m.mount}/login`, body: { role: m.role, jwt },
      secrets: [jwt], what: `log in with JWT auth at auth/${m.mount} (role ${m.role})`,
    });
    return requireAuth(r?.auth, `auth/${m.mount}/login`);
  }
}

function requireAuth(auth: VaultAuthBlock | null | undefined, path: string): VaultAuthBlock {
  if (!auth?.client_token || !auth.accessor) throw new BrokerError('upstream_error', `Vault answered ${path} without a token`);
  return auth;
}

/** A secret from a file (trimmed) or an environment variable. Errors name the source, never the value. */
export function readSecret(source: SecretSource, baseDir: string, where: string): string {
  let value: string | undefined;
  if ('file' in source) {
    try {
      value = readFileSync(resolve(baseDir, source.file), 'utf8').trim();
    } catch (e) {
      throw new BrokerError('invalid_config', `${where}: cannot read ${source.file} (${(e as NodeJS.ErrnoException).code ?? 'error'})`, {
        hint: 'the file must exist and be readable by the broker',
      });
    }
  } else {
    value = process.env[source.env]?.trim();
  }
  if (!value) {
    throw new BrokerError('invalid_config', `${where}: ${'file' in source ? `${source.file} is empty` : `environment variable ${source.env} is not set`}`);
  }
  return value;
}
