/**
 * For the local daemon: renew a task token in place with the token itself
 * (`POST auth/token/renew-self`, allowed by Vault's `default` policy), so an agent that holds the
 * token in its environment keeps working. When this fails (not renewable, `numUses` spent, revoked,
 * explicit max reached), the daemon asks the broker for a fresh token instead:
 * `POST /v1/sessions/:id/vault-token`.
 *
 * Why `notAfter`: for tokens created against a token role, Vault caps renewals by the *role's*
 * `token_explicit_max_ttl`, not by the explicit max TTL the broker set on the token (token store,
 * `authRenew`: `req.Auth.ExplicitMaxTTL = role.ExplicitMaxTTL`). So the increment is what keeps a
 * renewed token inside its task session: it is never more than the time left until `notAfter`.
 * (Vault sets the new TTL to the increment, capped by the max TTL.) Every renewal also counts as one
 * use of a token with `numUses`.
 */
import { BrokerError } from '../errors.js';
import { VaultHttp } from './http.js';

export interface RenewVaultTokenOptions {
  /** From the session's `vault.address` (and `vault.namespace`). */
  address: string;
  namespace?: string | undefined;
  token: string;
  /** The task session's end (its `expiresAt`): the renewed token never outlives it. */
  notAfter: Date;
  /** Requested new TTL in seconds; default: the time left until notAfter. */
  incrementSeconds?: number | undefined;
  timeoutMs?: number | undefined;
  now?: (() => number) | undefined;
}

export interface RenewedVaultToken {
  /** The token's TTL after renewal, as Vault granted it (may be less than asked). */
  ttlSeconds: number;
  expiresAt: Date;
  renewable: boolean;
}

export async function renewVaultToken(o: RenewVaultTokenOptions): Promise<RenewedVaultToken> {
  const now = (o.now ?? Date.now)();
  const left = Math.floor((o.notAfter.getTime() - now) / 1000);
  if (left < 1) {
    throw new BrokerError('conflict', 'the task session has ended: its Vault token is not renewed', { hint: 'start a new one: broker task <template>' });
  }
  const increment = Math.max(1, Math.min(left, Math.floor(o.incrementSeconds ?? left)));
  const http = new VaultHttp({ address: o.address, namespace: o.namespace, timeoutMs: o.timeoutMs ?? 5000 });
  const r = await http.call({
    method: 'POST', path: 'auth/token/renew-self', token: o.token, body: { increment: `${increment}s` }, what: 'renew the task token',
  });
  const ttlSeconds = r?.auth?.lease_duration ?? 0;
  return { ttlSeconds, expiresAt: new Date(now + ttlSeconds * 1000), renewable: r?.auth?.renewable ?? false };
}
