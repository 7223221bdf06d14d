/**
 * Vault tokens under task sessions: issue one (audited before it leaves, revoked if the audit write
 * fails), and revoke every token of a session by accessor when it ends, keeping failed revocations
 * for the sweeper to retry. The token itself is never stored, logged or audited; its accessor is.
 */
import { BrokerError, isBrokerError } from '../errors.js';
import type { Logger } from '../log.js';
import type { AuditEvent } from '../store/audit-event.js';
import type { SqliteStore, TaskSession, VaultTokenRecord } from '../store/sqlite-store.js';
import type { TaskTemplate } from '../templates/schema.js';
import { buildVaultTokenRequest, type VaultTokenRequest } from '../vault/token-request.js';
import type { VaultTokens } from '../vault/tokens.js';

/** A task token as handed to the developer's daemon. `token` is the only secret in it. */
export interface IssuedVaultToken {
  token: string;
  accessor: string;
  /** As Vault granted them (`token_policies`): the template's, plus `default` unless noDefaultPolicy. */
  policies: string[];
  role: string;
  ttlSeconds: number;
  /** When the token expires unless renewed. */
  expiresAt: Date;
  /** Its explicit max TTL: never later than the end of the task session. */
  maxExpiresAt: Date;
  renewable: boolean;
  /** 0: unlimited. */
  numUses: number;
  address: string;
  namespace: string | undefined;
}

export interface RevocationResult {
  accessor: string;
  revoked: boolean;
  /** Why it failed (Vault's message; no secret). The sweeper retries. */
  error?: string;
}

export interface SessionVaultTokensDeps {
  store: SqliteStore;
  tokens: VaultTokens;
  /** The service config's `vault.tokenRole`; a template's `vault.tokenRole` overrides it. */
  defaultRole: string;
  log: Logger;
  now: () => number;
}

export class SessionVaultTokens {
  constructor(private readonly deps: SessionVaultTokensDeps) {}

  get address(): string {
    return this.deps.tokens.address;
  }

  get namespace(): string | undefined {
    return this.deps.tokens.namespace;
  }

  /** The create request for this session now (throws a BrokerError if it cannot be made). */
  request(t: TaskTemplate, s: Pick<TaskSession, 'id' | 'developer' | 'agent' | 'expiresAt'>): VaultTokenRequest {
    return buildVaultTokenRequest(t, {
      developer: s.developer, sessionId: s.id, agent: s.agent, sessionExpiresAt: s.expiresAt, now: this.deps.now(),
    }, this.deps.defaultRole);
  }

  /**
   * Creates the session's token, then commits its audit record (with the accessor) before the token
   * leaves this function. If that write fails the token is revoked on the spot: fail closed.
   */
  async issue(t: TaskTemplate, s: TaskSession, event: 'vault.issue' | 'vault.reissue'): Promise<IssuedVaultToken> {
    const base = { event, developer: s.developer, template: t.name, sessionId: s.id, roleSessionName: s.roleSessionName };
    const req = this.request(t, s);
    const issuedAt = this.deps.now();
    let created;
    try {
      created = await this.deps.tokens.create(req, t.name);
    } catch (e) {
      try {
        this.deps.store.audit({ ...base, decision: 'failed', reason: (e as Error).message, detail: { role: req.role, policies: req.body.policies } });
      } catch { /* the Vault failure is what the caller needs to see */ }
      throw e;
    }
    const maxExpiresAt = issuedAt + req.explicitMaxTtlSeconds * 1000;
    try {
      this.deps.store.recordVaultToken({ accessor: created.accessor, sessionId: s.id, createdAt: issuedAt, expiresAt: maxExpiresAt }, {
        ...base, decision: 'issued', vaultAccessor: created.accessor, expiration: new Date(maxExpiresAt).toISOString(),
        detail: {
          role: req.role, policies: created.policies, ttlSeconds: created.ttlSeconds, explicitMaxTtlSeconds: req.explicitMaxTtlSeconds,
          numUses: created.numUses, renewable: created.renewable, displayName: req.body.display_name,
        },
      });
    } catch (e) {
      await this.revokeUnrecorded(created.accessor, s.id);
      throw e;
    }
    return {
      token: created.token, accessor: created.accessor, policies: created.policies, role: req.role, ttlSeconds: created.ttlSeconds,
      expiresAt: new Date(issuedAt + created.ttlSeconds * 1000), maxExpiresAt: new Date(maxExpiresAt), renewable: created.renewable,
      numUses: created.numUses, address: this.address, namespace: this.namespace,
    };
  }

  /** Revokes every unrevoked token of the session (it has ended or is being abandoned). */
  async revokeSession(s: TaskSession, reason: string): Promise<RevocationResult[]> {
    const results: RevocationResult[] = [];
    for (const record of this.deps.store.vaultTokens(s.id, { unrevokedOnly: true })) results.push((await this.revokeOne(record, s, reason)).result);
    return results;
  }

  /** Retries every token of an ended or expired session that is not revoked yet (the sweeper). */
  async revokePending(): Promise<RevocationResult[]> {
    const results: RevocationResult[] = [];
    for (const record of this.deps.store.vaultTokensToRevoke()) {
      const s = this.deps.store.getSession(record.sessionId);
      if (!s) continue;
      const { result, unreachable } = await this.revokeOne(record, s, s.endReason ?? 'expired');
      results.push(result);
      // Vault is down: the others would fail the same way; the next sweep tries again.
      if (unreachable) break;
    }
    return results;
  }

  private async revokeOne(record: VaultTokenRecord, s: TaskSession, reason: string): Promise<{ result: RevocationResult; unreachable: boolean }> {
    const base: Omit<AuditEvent, 'decision'> = {
      event: 'vault.revoke', developer: s.developer, template: s.template, sessionId: s.id, vaultAccessor: record.accessor, reason,
    };
    try {
      await this.deps.tokens.revokeAccessor(record.accessor);
    } catch (e) {
      const unreachable = isBrokerError(e) && e.code === 'upstream_unavailable';
      const error = (e as Error).message;
      this.deps.log.warn({ sessionId: s.id, accessor: record.accessor, attempts: record.revokeAttempts + 1, err: (e as Error).message }, 'could not revoke a Vault token; the sweeper retries');
      try {
        // The first failure is audited; later ones are counted on the token's row and logged.
        this.deps.store.recordVaultRevokeFailure(record.accessor, error, record.revokeAttempts === 0
          ? { ...base, decision: 'failed', reason: `${reason}; revocation failed: ${(e as Error).message}` } : undefined);
      } catch (auditError) {
        this.deps.log.error({ accessor: record.accessor, err: (auditError as Error).message }, 'could not record a failed revocation');
      }
      return { result: { accessor: record.accessor, revoked: false, error }, unreachable };
    }
    try {
      this.deps.store.markVaultTokenRevoked(record.accessor, {
        ...base, decision: 'revoked', ...(record.revokeAttempts ? { detail: { failedAttemptsBefore: record.revokeAttempts } } : {}),
      });
    } catch (e) {
      // Revoked in Vault, not yet recorded: the next sweep revokes again (idempotent) and records it.
      this.deps.log.error({ accessor: record.accessor, err: (e as Error).message }, 'revoked a Vault token but could not record it');
    }
    this.deps.log.info({ sessionId: s.id, accessor: record.accessor, reason }, 'Vault token revoked');
    return { result: { accessor: record.accessor, revoked: true }, unreachable: false };
  }

  /** A token whose issue could not be audited never leaves: revoke it now, or say loudly that it lives. */
  private async revokeUnrecorded(accessor: string, sessionId: string): Promise<void> {
    try {
      await this.deps.tokens.revokeAccessor(accessor);
      this.deps.log.warn({ sessionId, accessor }, 'revoked a Vault token whose issue could not be audited');
    } catch (e) {
      // Nobody holds it (it was never returned) and it dies at its explicit max TTL, within the session.
      this.deps.log.error({ sessionId, accessor, err: (e as Error).message }, 'could not revoke a Vault token whose issue could not be audited');
    }
  }
}

/** Thrown when a template needs Vault and the service has none configured. */
export function vaultNotConfigured(template: string): BrokerError {
  return new BrokerError('upstream_unavailable', `task template "${template}" grants a Vault token, and this broker service has no Vault configured`, {
    hint: 'an admin adds a vault: block to the service configuration (docs/vault.md)',
  });
}
