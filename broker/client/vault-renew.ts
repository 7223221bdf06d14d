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
 *
 * The developer's side has its own one request here rather than the service's Vault client
 * (broker/vault/): it holds only a task token, never the broker's login, and needs one endpoint.
 */
import { BrokerError } from '../errors.js';

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
  const address = o.address.replace(/\/+$/, '');
  const timeoutMs = o.timeoutMs ?? 5000;
  let res: Response;
  try {
    res = await fetch(`${address}/v1/auth/token/renew-self`, {
      method: 'POST',
      headers: {
        accept: 'application/json', 'content-type': 'application/json', 'x-vault-token': o.token,
        ...(o.namespace ? { 'x-vault-namespace': o.namespace } : {}),
      },
      body: JSON.stringify({ increment: `${increment}s` }),
      signal: AbortSignal.timeout(timeoutMs),
      // fetch keeps custom headers across redirects, the token included: never follow one.
      redirect: 'error',
    });
  } catch (e) {
    // Only the kind of failure: the fetch error is not carried along.
    const reason = (e as Error).name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : 'network error';
    throw new BrokerError('upstream_unavailable', `Vault at ${address} is unreachable (${reason}): could not renew the task token`);
  }
  const text = await res.text().catch(() => '');
  let body: { auth?: { lease_duration?: unknown; renewable?: unknown } | null; errors?: unknown } | undefined;
  try {
    body = text ? JSON.parse(text) as typeof body : undefined;
  } catch {
    if (res.ok) throw new BrokerError('upstream_error', `Vault answered ${res.status} to the renewal with something other than JSON`);
  }
  if (!res.ok) {
    // Vault's own error texts (never an echo of the token; scrubbed all the same).
    const said = Array.isArray(body?.errors) ? body.errors.filter((x): x is string => typeof x === 'string').join('; ').split(o.token).join('[redacted]').slice(0, 500) : '';
    const code = res.status === 503 || res.status === 429 || res.status === 502 || res.status === 504 ? 'upstream_unavailable' : 'upstream_error';
    throw new BrokerError(code, `Vault refused to renew the task token (HTTP ${res.status})${said ? `: ${said}` : ''}`);
  }
  const ttl = body?.auth?.lease_duration;
  const ttlSeconds = typeof ttl === 'number' && Number.isFinite(ttl) && ttl >= 0 ? ttl : 0;
  return { ttlSeconds, expiresAt: new Date(now + ttlSeconds * 1000), renewable: body?.auth?.renewable === true };
}
