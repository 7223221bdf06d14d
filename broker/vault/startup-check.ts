/**
 * What the service checks about Vault when it starts: that its own login works and is not root
 * (fatal unless allowed), and that the token roles the templates use are set up the way the broker
 * relies on (logged, once, like the AWS trust check). Vault being unreachable at start is not fatal:
 * AWS-only tasks keep working and Vault tasks fail with a clear 503 until it is back.
 */
import { isBrokerError } from '../errors.js';
import { MAX_DURATION_SECONDS } from '../limits/aws.js';
import type { Logger } from '../log.js';
import type { VaultAuth } from './auth.js';
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
    log.warn({ address: o.tokens.address, method: auth.method, err: (e as Error).message }, 'Vault is not usable yet; tasks that need it fail until it is');
    return;
  }

  const roles = new Map<string, string[]>();
  for (const g of o.grants) roles.set(g.role, [...(roles.get(g.role) ?? []), g.template]);
  for (const [name, templates] of roles) {
    let role;
    try {
      role = await o.tokens.readRole(name);
    } catch (e) {
      log.info({ role: name, err: (e as Error).message }, 'could not read the token role to check it (the broker policy may lack read on auth/token/roles/*)');
      continue;
    }
    if (!role) {
      log.warn({ role: name, templates }, `the token role "${name}" does not exist in Vault; these templates fail until it does`);
      continue;
    }
    if (!role.orphan) {
      log.warn({ role: name }, `tokens of role "${name}" are not orphans: they die with the broker's own login token (each AppRole/JWT login has a lease); set orphan=true`);
    }
    if (role.tokenExplicitMaxTtlSeconds === 0 || role.tokenExplicitMaxTtlSeconds > MAX_DURATION_SECONDS) {
      // Token store authRenew: renewals of role tokens use the role's explicit max TTL, not the token's.
      log.warn({ role: name, tokenExplicitMaxTtl: role.tokenExplicitMaxTtlSeconds },
        `role "${name}" has no token_explicit_max_ttl of at most 12h: Vault caps renewals of its tokens by the role's value, not the token's own, so a token holder could renew past the end of its task; set token_explicit_max_ttl=12h`);
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
