/**
 * From a validated template and a task session to the exact `auth/token/create/:role_name` request.
 * Pure: no Vault call, so the service and `broker policy explain` build the same request.
 */
import { BrokerError } from '../errors.js';
import type { VaultTokenCreateBody } from '../vault/tokens.js';
import type { TaskTemplate } from './schema.js';

export interface VaultTokenContext {
  /** The developer's identity (`meta.developer`). */
  developer: string;
  sessionId: string;
  agent: string;
  /** When the task session ends (ms since the epoch). */
  sessionExpiresAt: number;
  now: number;
}

export interface VaultTokenRequest {
  role: string;
  body: VaultTokenCreateBody;
  ttlSeconds: number;
  explicitMaxTtlSeconds: number;
}

/**
 * `display_name`: Vault prefixes it with `token-` and turns every character outside [A-Za-z0-9-]
 * into `-` (token store, handleCreateCommon), so it is built from those characters to start with:
 * `broker-<task>-<session id>` shows as `token-broker-db-migrate-abcdefgh23` in Vault's audit log.
 */
export function vaultDisplayName(task: string, sessionId: string): string {
  return `broker-${task}-${sessionId}`.replace(/[^A-Za-z0-9-]/g, '-');
}

/**
 * TTLs: `explicit_max_ttl` = min(template explicitMaxTtl, time left in the task session), so the token
 * cannot outlive its task even if revoking it fails; `ttl` = min(template ttl, that). Both in whole
 * seconds, at least 1 (a session with less than a second left is over).
 */
export function buildVaultTokenRequest(t: TaskTemplate, ctx: VaultTokenContext, defaultRole: string): VaultTokenRequest {
  const v = t.vault;
  if (!v) throw new BrokerError('invalid_request', `task template "${t.name}" grants no Vault token`);
  const left = Math.floor((ctx.sessionExpiresAt - ctx.now) / 1000);
  if (left < 1) throw new BrokerError('conflict', `task session ${ctx.sessionId} has no time left for a Vault token`, { hint: `start a new one: broker task ${t.name}` });
  const explicitMaxTtlSeconds = Math.min(v.explicitMaxTtlSeconds, left);
  const ttlSeconds = Math.min(v.ttlSeconds, explicitMaxTtlSeconds);
  return {
    role: v.tokenRole ?? defaultRole,
    ttlSeconds,
    explicitMaxTtlSeconds,
    body: {
      policies: [...v.policies],
      // The broker's own keys last, so nothing can shadow them (validate.ts refuses such keys anyway).
      meta: { ...v.metadata, developer: ctx.developer, task: t.name, session: ctx.sessionId, agent: ctx.agent },
      ttl: `${ttlSeconds}s`,
      explicit_max_ttl: `${explicitMaxTtlSeconds}s`,
      num_uses: v.numUses,
      renewable: v.renewable,
      display_name: vaultDisplayName(t.name, ctx.sessionId),
      no_default_policy: v.noDefaultPolicy,
    },
  };
}
