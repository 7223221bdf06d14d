/**
 * Whether a token role is safe to create task tokens against, and the guard that checks it before
 * every issue. OpenBao/Vault token auth API, "Create/Update token role" (`auth/token/roles/:name`):
 *
 * - `orphan`: "tokens created against this policy will be orphan tokens (they will have no parent)".
 *   A task token that is not an orphan is a child of the broker's own login token and is revoked
 *   with it (each AppRole/JWT login has a lease, renewed or replaced all the time): it would end at a
 *   moment the broker neither chose nor recorded.
 * - `token_explicit_max_ttl`: "a hard cap even if token_ttl and token_max_ttl would otherwise allow
 *   a renewal". For role tokens Vault caps renewals by the *role's* value, counted from the token's
 *   creation, not by the explicit max TTL the broker puts on each token (token store, `authRenew`):
 *   without one, whoever holds a task token renews it up to the mount's max TTL (768h by default).
 *
 * Safe: orphan, and a token_explicit_max_ttl in (0, 12h], 12h being the longest task session.
 */
import { BrokerError, isBrokerError } from '../errors.js';
import { MAX_DURATION_SECONDS } from '../limits/aws.js';
import type { Logger } from '../log.js';
import { vaultStatus } from './http.js';
import type { TokenRoleInfo, VaultTokens } from './tokens.js';

/** The longest `token_explicit_max_ttl` a task token role may have: the longest task session. */
export const MAX_ROLE_EXPLICIT_MAX_TTL_SECONDS = MAX_DURATION_SECONDS;

/**
 * How long a role found safe is trusted before it is read again. Issuing does not read the role
 * every time; a role an admin makes unsafe stops issuance within this time.
 */
export const ROLE_CHECK_CACHE_MS = 60_000;

/** What makes the role unsafe for task tokens; empty when it is safe. */
export function tokenRoleProblems(role: TokenRoleInfo): string[] {
  const problems: string[] = [];
  if (!role.orphan) problems.push('it is not an orphan role');
  if (role.tokenExplicitMaxTtlSeconds <= 0) problems.push('it has no token_explicit_max_ttl');
  else if (role.tokenExplicitMaxTtlSeconds > MAX_ROLE_EXPLICIT_MAX_TTL_SECONDS) {
    problems.push(`its token_explicit_max_ttl is ${hours(role.tokenExplicitMaxTtlSeconds)}, above 12h`);
  }
  return problems;
}

/** The command that makes the role safe (a role write updates only the fields it names). */
export function tokenRoleFix(name: string): string {
  return `bao write auth/token/roles/${name} orphan=true token_explicit_max_ttl=12h`;
}

const WHY = 'without it Vault lets whoever holds a task token renew it past the end of its task';

/** At start: the service refuses to run against an unsafe role unless vault.allowUnsafeTokenRole. */
export function unsafeTokenRoleAtStart(role: TokenRoleInfo, problems: string[], templates: string[]): BrokerError {
  return new BrokerError('invalid_config', `Vault token role "${role.name}" is unsafe for task tokens: ${problems.join(', and ')}`, {
    hint: `fix the role: ${tokenRoleFix(role.name)} (${WHY}; deploy/vault/setup.sh writes it so). `
      + 'For a local development Vault only: vault.allowUnsafeTokenRole: true',
    details: [{ message: `used by the task templates ${templates.join(', ')}` }],
  });
}

/**
 * Checks the token role before a task token is created against it: safe roles are remembered for
 * ROLE_CHECK_CACHE_MS; anything else (unsafe, missing, unreadable) is re-read at the next issue, so a
 * fixed role issues again at once. With `allowUnsafe` (a development Vault) nothing is refused.
 */
export class TokenRoleGuard {
  private readonly checked = new Map<string, { role: TokenRoleInfo | undefined; at: number }>();

  constructor(private readonly deps: {
    tokens: Pick<VaultTokens, 'readRole'>; allowUnsafe: boolean; log: Logger; now: () => number; cacheMs?: number;
  }) {}

  /** The role as read (undefined when it could not be, with allowUnsafe); throws if nothing may be issued. */
  async check(name: string, template: string): Promise<TokenRoleInfo | undefined> {
    const now = this.deps.now();
    const cached = this.checked.get(name);
    if (cached && now - cached.at < (this.deps.cacheMs ?? ROLE_CHECK_CACHE_MS)) return cached.role;
    let role: TokenRoleInfo | undefined;
    try {
      role = await this.deps.tokens.readRole(name);
    } catch (e) {
      if (this.deps.allowUnsafe) {
        this.deps.log.warn({ role: name, err: (e as Error).message }, 'could not read the token role; issuing anyway (vault.allowUnsafeTokenRole: true)');
        this.checked.set(name, { role: undefined, at: now });
        return undefined;
      }
      throw unreadable(name, e);
    }
    if (!role) {
      if (this.deps.allowUnsafe) return undefined; // Vault refuses the create with its own message
      throw new BrokerError('upstream_unavailable', `Vault token role "${name}" does not exist; no token is issued`, {
        hint: `an admin creates it (deploy/vault/setup.sh), e.g. ${tokenRoleFix(name)} allowed_policies=…; or sets vault.tokenRole in the template "${template}" or the service config`,
      });
    }
    const problems = tokenRoleProblems(role);
    if (problems.length && !this.deps.allowUnsafe) {
      throw new BrokerError('upstream_unavailable', `Vault token role "${name}" is unsafe for task tokens (${problems.join(', and ')}); no token is issued`, {
        hint: `an admin fixes the role: ${tokenRoleFix(name)} (${WHY}); then start the task again`,
      });
    }
    if (problems.length) {
      this.deps.log.warn({ role: name, problems }, `issuing a task token against the unsafe token role "${name}" (vault.allowUnsafeTokenRole: true): development only`);
    }
    this.checked.set(name, { role, at: now });
    return role;
  }
}

/** A role the broker cannot read is refused like an unsafe one: what is not checked is not issued. */
function unreadable(name: string, e: unknown): unknown {
  if (!isBrokerError(e)) return e;
  if (vaultStatus(e) === 403) {
    return new BrokerError('upstream_unavailable', `could not check Vault token role "${name}" (Vault answered 403 to reading it); no token is issued`, {
      cause: e.cause,
      hint: `the broker's own Vault policy must allow "read" on auth/token/roles/${name} (deploy/vault/broker-policy.hcl)`,
    });
  }
  // Unreachable, sealed …: the create would have failed the same way; Vault's own error says why.
  return e;
}

function hours(seconds: number): string {
  return seconds % 3600 === 0 ? `${seconds / 3600}h` : `${seconds}s`;
}
