/**
 * What the service checks about Vault when it starts: that its own login works and is not root
 * (fatal unless allowed), and that the token roles the templates use are safe for task tokens
 * (orphan, token_explicit_max_ttl of at most 12h: fatal unless vault.allowUnsafeTokenRole; see
 * token-role-safety.ts). Vault being unreachable, or a role it will not let the broker read, is not
 * fatal: AWS-only tasks keep working, and every issue checks the role first (TokenRoleGuard), so
 * Vault tasks get a clear 503 until the role has been checked.
 */
import { isBrokerError } from '../errors.js';
import type { Logger } from '../log.js';
import type { VaultAuth } from './auth.js';
import { tokenRoleFix, tokenRoleProblems, unsafeTokenRoleAtStart } from './token-role-safety.js';
import type { VaultTokens } from './tokens.js';

/** What a template's Vault grant asks of Vault (the service maps its templates to these). */
export interface VaultGrantToCheck {
  template: string;
  /** The token role its tokens are created against (the template's, else the service's default). */
  role: string;
  policies: readonly string[];
}

export async function checkVaultAtStart(o: {
  auth: VaultAuth; tokens: VaultTokens; grants: readonly VaultGrantToCheck[]; log: Logger;
  /** vault.allowUnsafeTokenRole (a loopback development Vault only): warn instead of refusing. */
  allowUnsafeTokenRole: boolean;
}): Promise<void> {
  const { auth, log } = o;
  try {
    const self = await auth.check();
    log.info({ address: o.tokens.address, method: auth.method, accessor: self.accessor, policies: self.policies, ttlSeconds: self.ttlSeconds }, 'Vault login checked');
  } catch (e) {
    // With JWT auth Vault fetches the broker's JWKS from its public URL, which may only route once
    // this service is up and ready (a load balancer's health check): a failed first login can fix
    // itself, so it is not fatal. A refused token or AppRole secret is a configuration error.
    const transient = isBrokerError(e) && (e.code === 'upstream_unavailable' || (auth.method === 'jwt' && e.code === 'upstream_error'));
    if (!transient) throw e;
    log.warn({ address: o.tokens.address, method: auth.method, err: (e as Error).message }, 'Vault is not usable yet; tasks that need it fail until it is, and their token roles are checked before the first token is issued');
    return;
  }

  const roles = new Map<string, string[]>();
  for (const g of o.grants) roles.set(g.role, [...(roles.get(g.role) ?? []), g.template]);
  for (const [name, templates] of roles) {
    let role;
    try {
      role = await o.tokens.readRole(name);
    } catch (e) {
      log.warn({ role: name, templates, err: (e as Error).message },
        `could not read the token role "${name}" to check it; no token is issued against it until it can be (the broker's Vault policy needs "read" on auth/token/roles/${name})`);
      continue;
    }
    if (!role) {
      log.warn({ role: name, templates }, `the token role "${name}" does not exist in Vault; these templates fail until it does`);
      continue;
    }
    const problems = tokenRoleProblems(role);
    if (problems.length && !o.allowUnsafeTokenRole) throw unsafeTokenRoleAtStart(role, problems, templates);
    if (problems.length) {
      log.warn({ role: name, templates, problems, fix: tokenRoleFix(name) },
        `UNSAFE: the token role "${name}" is unsafe for task tokens (${problems.join(', and ')}); issuing anyway because vault.allowUnsafeTokenRole is true: development only`);
    }
    if (role.allowedPolicies.length) {
      for (const g of o.grants) {
        if (g.role !== name) continue;
        const outside = g.policies.filter((p) => !role.allowedPolicies.includes(p));
        if (outside.length) {
          log.warn({ role: name, template: g.template, policies: outside }, `template "${g.template}" asks for policies outside the allowed_policies of role "${name}"; starting it fails until one of them changes`);
        }
      }
    }
  }
}
