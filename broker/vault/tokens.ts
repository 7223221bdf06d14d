/**
 * The token operations the broker performs with its own Vault login: create a task token against a
 * token role, look one up and revoke one by accessor, read a token role. OpenBao/Vault token auth
 * API: `auth/token/create/:role_name`, `auth/token/lookup-accessor`, `auth/token/revoke-accessor`,
 * `auth/token/roles/:role_name`.
 */
import { BrokerError, isBrokerError } from '../errors.js';
import type { VaultAuth } from './auth.js';
import { VaultApiError, vaultStatus, type VaultHttp } from './http.js';

/** The body of `POST auth/token/create/:role_name` (OpenBao/Vault token auth API). */
export interface VaultTokenCreateBody {
  policies: string[];
  meta: Record<string, string>;
  /** Vault duration strings, in seconds: `"1800s"`. */
  ttl: string;
  explicit_max_ttl: string;
  num_uses: number;
  renewable: boolean;
  display_name: string;
  no_default_policy: boolean;
}

/** A token create against a token role (templates/vault-token-request.ts builds one from a template). */
export interface TokenCreateRequest {
  role: string;
  body: VaultTokenCreateBody;
}

/** A task token as Vault created it. `token` is the secret; everything else may be logged. */
export interface CreatedVaultToken {
  token: string;
  accessor: string;
  /** Vault's `token_policies`: the template's policies, plus `default` unless noDefaultPolicy. */
  policies: string[];
  ttlSeconds: number;
  renewable: boolean;
  numUses: number;
}

/** Parts of `auth/token/roles/:role_name` the broker checks at start and before issuing (token-role-safety.ts). */
export interface TokenRoleInfo {
  name: string;
  allowedPolicies: string[];
  orphan: boolean;
  renewable: boolean;
  /** 0: none. Renewals of role tokens are capped by this, not by the token's own explicit max TTL. */
  tokenExplicitMaxTtlSeconds: number;
}

export class VaultTokens {
  constructor(private readonly http: VaultHttp, private readonly auth: VaultAuth) {}

  get address(): string {
    return this.http.address;
  }

  get namespace(): string | undefined {
    return this.http.namespace;
  }

  /**
   * With the broker's token; once more with a fresh login if Vault answers 403 and the method can
   * log in again (the broker's own token was revoked or expired under it).
   */
  private async withToken<T>(fn: (token: string) => Promise<T>): Promise<T> {
    const token = await this.auth.token();
    try {
      return await fn(token);
    } catch (e) {
      if (vaultStatus(e) !== 403 || !this.auth.canLogInAgain) throw e;
      this.auth.invalidate(token);
      return fn(await this.auth.token());
    }
  }

  async create(req: TokenCreateRequest, template: string): Promise<CreatedVaultToken> {
    const path = `auth/token/create/${encodeURIComponent(req.role)}`;
    let r;
    try {
      r = await this.withToken((token) => this.http.call({ method: 'POST', operation: 'token_create', path, token, body: req.body, what: `create a token with role ${req.role}` }));
    } catch (e) {
      throw withHint(e, createHint(e, req.role, template));
    }
    const a = r?.auth;
    if (!a?.client_token || !a.accessor) throw new BrokerError('upstream_error', `Vault answered ${path} without a token`);
    return {
      token: a.client_token, accessor: a.accessor, policies: a.token_policies ?? a.policies ?? [],
      ttlSeconds: a.lease_duration, renewable: a.renewable, numUses: a.num_uses ?? req.body.num_uses,
    };
  }

  /**
   * Revokes the token (and its children) by accessor. `found: false` when Vault no longer knows the
   * token (it expired at its TTL or explicit max TTL, used up its `num_uses`, or was revoked by
   * someone else): it is dead, which is what revoking was for.
   */
  async revokeAccessor(accessor: string): Promise<{ found: boolean }> {
    let r;
    try {
      r = await this.withToken((token) => this.http.call({
        method: 'POST', operation: 'token_revoke_accessor', path: 'auth/token/revoke-accessor', token, body: { accessor }, what: `revoke the token with accessor ${accessor}`,
      }));
    } catch (e) {
      const cause = (e as { cause?: unknown }).cause;
      if (cause instanceof VaultApiError && accessorGone(cause.status, cause.errors)) return { found: false };
      throw e;
    }
    return { found: !accessorGone(200, r?.warnings ?? []) };
  }

  /** Token properties by accessor (never the token itself); undefined when Vault knows no such token. */
  async lookupAccessor(accessor: string): Promise<Record<string, unknown> | undefined> {
    try {
      const r = await this.withToken((token) => this.http.call({
        method: 'POST', operation: 'token_lookup_accessor', path: 'auth/token/lookup-accessor', token, body: { accessor }, what: `look up the token with accessor ${accessor}`,
      }));
      return r?.data ?? undefined;
    } catch (e) {
      if (vaultStatus(e) === 400) return undefined;
      throw e;
    }
  }

  async readRole(name: string): Promise<TokenRoleInfo | undefined> {
    try {
      const r = await this.withToken((token) => this.http.call<Record<string, unknown>>({
        method: 'GET', operation: 'token_role_read', path: `auth/token/roles/${encodeURIComponent(name)}`, token, what: `read token role ${name}`,
      }));
      const d = r?.data;
      if (!d) return undefined;
      const list = (v: unknown) => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
      return {
        name,
        allowedPolicies: list(d.allowed_policies),
        orphan: d.orphan === true,
        renewable: d.renewable !== false,
        tokenExplicitMaxTtlSeconds: typeof d.token_explicit_max_ttl === 'number' ? d.token_explicit_max_ttl
          : typeof d.explicit_max_ttl === 'number' ? d.explicit_max_ttl : 0,
      };
    } catch (e) {
      if (vaultStatus(e) === 404) return undefined;
      throw e;
    }
  }
}

/**
 * Does Vault's answer to `auth/token/revoke-accessor` say there is no such token any more? Token
 * store, handleUpdateRevokeAccessor (Vault and OpenBao alike): an accessor without an index entry is
 * a 200 with the warning "No token found with this accessor"; an index entry whose token is already
 * gone (expired or mid-revocation) is a 400 "token not found". Older Vault versions answered an
 * unknown accessor with a 400 "invalid accessor" (what `lookup-accessor` still answers). Any other
 * answer, e.g. a 400 "missing accessor" or a 403, is a real failure and is retried.
 */
export function accessorGone(status: number, messages: readonly string[]): boolean {
  if (status !== 200 && status !== 400) return false;
  const known = status === 200 ? /\bno token found with this accessor\b/i : /\b(token not found|invalid accessor)\b/i;
  return messages.some((m) => known.test(m));
}

/** What to do about a refused token creation, by Vault's answer (the message itself is Vault's). */
function createHint(e: unknown, role: string, template: string): string | undefined {
  const status = vaultStatus(e);
  const said = isBrokerError(e) ? e.message : '';
  if (status === 400 && /allowed policies|subset/i.test(said)) {
    return `the policies of task template "${template}" must be among the allowed_policies of the token role "${role}" `
      + `(see them with: bao read auth/token/roles/${role}); an admin changes the template's vault.policies or the role`;
  }
  if (status === 400 && /unknown role/i.test(said)) {
    return `create the token role "${role}" in Vault (deploy/vault/setup.sh), or set vault.tokenRole in the template or the service config`;
  }
  if (status === 403) {
    return `the broker's own Vault policy must allow "update" on auth/token/create/${role} (deploy/vault/broker-policy.hcl)`;
  }
  return undefined;
}

function withHint(e: unknown, hint: string | undefined): unknown {
  if (!hint || !isBrokerError(e)) return e;
  return new BrokerError(e.code, e.message, { cause: e.cause, hint, ...(e.details ? { details: e.details } : {}) });
}
