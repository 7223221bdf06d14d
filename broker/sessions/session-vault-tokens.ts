/**
 * Vault tokens under task sessions: issue one (only against a token role checked safe, audited
 * before it leaves, revoked if the audit write fails or its session ended meanwhile), and revoke every token of a session by accessor when it
 * ends, keeping failed revocations for the sweeper to retry until Vault confirms or the token is
 * past the latest it can live. The token itself is never stored, logged or audited; its accessor is.
 */
import type { z } from 'zod';
import { BrokerError, isBrokerError } from '../errors.js';
import type { Logger } from '../log.js';
import type { BrokerMetrics } from '../metrics/service-metrics.js';
import type { AuditEvent } from '../store/audit-event.js';
import type { Store, TaskSession, VaultTokenRecord } from '../store/store.js';
import type { TaskTemplate } from '../templates/schema.js';
import { outcomeUnknown } from '../vault/http.js';
import { VAULT_DEFAULT_MAX_TTL_SECONDS } from '../limits/vault.js';
import { buildVaultTokenRequest, type VaultTokenRequest } from '../templates/vault-token-request.js';
import { TokenRoleGuard } from '../vault/token-role-safety.js';
import type { VaultTokens } from '../vault/tokens.js';
import type { revocationResult } from '../wire/service-api.js';

/**
 * How long past a token's `deadBy` a failing revocation is still retried: room for the broker's and
 * Vault's clocks to disagree, so the broker never gives up on a token Vault still honours.
 */
const LAPSE_MARGIN_MS = 5 * 60_000;

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

/** What became of one token's revocation, as `DELETE /v1/sessions/:id` reports it (wire/service-api.ts). */
export type RevocationResult = z.infer<typeof revocationResult>;

export interface SessionVaultTokensDeps {
  store: Pick<Store, 'sessions' | 'vaultTokens' | 'auditLog'>;
  tokens: VaultTokens;
  /** The service config's `vault.tokenRole`; a template's `vault.tokenRole` overrides it. */
  defaultRole: string;
  log: Logger;
  now: () => number;
  /** vault.allowUnsafeTokenRole (a loopback development Vault only): issue against an unsafe role. */
  allowUnsafeTokenRole?: boolean;
  /** Issuances (issued, failed, withheld) are counted here (absent: not counted). */
  metrics?: BrokerMetrics | undefined;
}

export class SessionVaultTokens {
  private readonly roles: TokenRoleGuard;

  constructor(private readonly deps: SessionVaultTokensDeps) {
    this.roles = new TokenRoleGuard({ tokens: deps.tokens, allowUnsafe: deps.allowUnsafeTokenRole ?? false, log: deps.log, now: deps.now });
  }

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
   * Checks the token role (orphan, token_explicit_max_ttl of at most 12h: nothing is created against
   * a role that is not, or that cannot be read), creates the session's token, then commits its audit
   * record (with the accessor) before the token leaves this function. If that write fails the token is revoked on the spot: fail closed. If the
   * session ended while the token was being created (a concurrent `broker end`), the token is
   * recorded under the ended session, revoked, and never returned: 409 conflict.
   */
  async issue(t: TaskTemplate, s: TaskSession, event: 'vault.issue' | 'vault.reissue'): Promise<IssuedVaultToken> {
    const progress = { created: false };
    try {
      const issued = await this.create(t, s, event, progress);
      this.deps.metrics?.issuance(event, t.name, 'issued');
      return issued;
    } catch (e) {
      // Created by Vault but not handed out (its record could not be committed, or the session ended): withheld.
      this.deps.metrics?.issuance(event, t.name, progress.created ? 'withheld' : 'failed');
      throw e;
    }
  }

  private async create(t: TaskTemplate, s: TaskSession, event: 'vault.issue' | 'vault.reissue', progress: { created: boolean }): Promise<IssuedVaultToken> {
    const base = { event, developer: s.developer, template: t.name, sessionId: s.id, roleSessionName: s.roleSessionName };
    let req = this.request(t, s);
    let role;
    try {
      role = await this.roles.check(req.role, t.name);
    } catch (e) {
      await this.auditFailedCreate(e, req, base, true);
      throw e;
    }
    // Again, now: the role read may have taken a moment, and the explicit max TTL counts from here.
    req = this.request(t, s);
    const issuedAt = this.deps.now();
    let created;
    try {
      created = await this.deps.tokens.create(req, t.name);
    } catch (e) {
      await this.auditFailedCreate(e, req, base);
      throw e;
    }
    progress.created = true;
    const receivedAt = this.deps.now();
    const maxExpiresAt = issuedAt + req.explicitMaxTtlSeconds * 1000;
    // The latest Vault can keep this token alive. Vault caps renewals of a role's token by the
    // *role's* token_explicit_max_ttl (token store, authRenew), not by the token's own explicit max
    // TTL; a token nobody can renew ends at its own. A role without one (or unread, which only
    // vault.allowUnsafeTokenRole lets through) is bounded by Vault's default max TTL.
    const roleBound = role && role.tokenExplicitMaxTtlSeconds > 0 ? role.tokenExplicitMaxTtlSeconds : VAULT_DEFAULT_MAX_TTL_SECONDS;
    const deadBy = receivedAt + 1000 * (created.renewable ? Math.max(req.explicitMaxTtlSeconds, roleBound) : req.explicitMaxTtlSeconds);
    let open: boolean;
    try {
      open = await this.deps.store.vaultTokens.record({ accessor: created.accessor, sessionId: s.id, createdAt: issuedAt, expiresAt: maxExpiresAt, deadBy }, {
        ...base, decision: 'issued', vaultAccessor: created.accessor, expiration: new Date(maxExpiresAt).toISOString(),
        detail: {
          role: req.role, policies: created.policies, ttlSeconds: created.ttlSeconds, explicitMaxTtlSeconds: req.explicitMaxTtlSeconds,
          numUses: created.numUses, renewable: created.renewable, displayName: req.body.display_name,
        },
      }, {
        ...base, decision: 'denied', vaultAccessor: created.accessor,
        reason: `task session ${s.id} ended while its Vault token was being created; the token is revoked, not handed out`,
      });
    } catch (e) {
      await this.revokeUnrecorded(created.accessor, s.id);
      throw e;
    }
    if (!open) {
      this.deps.metrics?.denial(event, 'conflict');
      // The row is recorded under the ended session: if revoking fails now, the sweeper retries.
      const ended = (await this.deps.store.sessions.get(s.id)) ?? s;
      const record = (await this.deps.store.vaultTokens.ofSession(s.id, { unrevokedOnly: true })).find((r) => r.accessor === created.accessor);
      // No record left: the sweeper got to it first.
      const revoked = record ? (await this.revokeOne(record, ended, 'session ended while the token was being created')).result.revoked : true;
      throw new BrokerError('conflict', `task session ${s.id} ${ended.endedAt === null ? 'expired' : 'ended'} while its Vault token was being created; `
        + (revoked ? 'the token was revoked' : 'the token is not handed out, and its revocation is retried until Vault confirms'), {
        hint: `start a new one: broker task ${t.name}`,
      });
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
    for (const record of await this.deps.store.vaultTokens.ofSession(s.id, { unrevokedOnly: true })) results.push((await this.revokeOne(record, s, reason)).result);
    return results;
  }

  /**
   * Retries every token of an ended or expired session that is not revoked yet (the sweeper). A
   * token whose revocation has failed before and that is past the latest Vault can keep it alive is
   * dead whatever Vault says: it is recorded as `vault.revoke expired` and no longer retried.
   */
  async revokePending(): Promise<RevocationResult[]> {
    const results: RevocationResult[] = [];
    const now = this.deps.now();
    for (const record of await this.deps.store.vaultTokens.pastDeadBy(now - LAPSE_MARGIN_MS, VAULT_DEFAULT_MAX_TTL_SECONDS * 1000)) {
      const s = await this.deps.store.sessions.get(record.sessionId);
      if (s) results.push(await this.lapse(record, s));
    }
    for (const record of await this.deps.store.vaultTokens.toRevoke()) {
      const s = await this.deps.store.sessions.get(record.sessionId);
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
    let found: boolean;
    try {
      ({ found } = await this.deps.tokens.revokeAccessor(record.accessor));
    } catch (e) {
      const unreachable = isBrokerError(e) && e.code === 'upstream_unavailable';
      const error = (e as Error).message;
      const attempts = record.revokeAttempts + 1;
      // Warn on attempts 1, 2, 4, 8 …: a long outage does not fill the log with one line per sweep.
      const level = (attempts & (attempts - 1)) === 0 ? 'warn' : 'debug';
      this.deps.log[level]({ sessionId: s.id, accessor: record.accessor, attempts, err: error }, 'could not revoke a Vault token; the sweeper retries');
      try {
        // The first failure is audited; later ones are counted on the token's row and logged.
        await this.deps.store.vaultTokens.recordRevokeFailure(record.accessor, error, record.revokeAttempts === 0
          ? { ...base, decision: 'failed', reason: `${reason}; revocation failed: ${(e as Error).message}` } : undefined);
      } catch (auditError) {
        this.deps.log.error({ accessor: record.accessor, err: (auditError as Error).message }, 'could not record a failed revocation');
      }
      return { result: { accessor: record.accessor, revoked: false, error }, unreachable };
    }
    // Vault no longer knowing the token (expired, used up, revoked by someone else) is the outcome
    // revoking was for: recorded as revoked, with what Vault said.
    const detail = { ...(record.revokeAttempts ? { failedAttemptsBefore: record.revokeAttempts } : {}), ...(found ? {} : { alreadyGoneInVault: true }) };
    try {
      await this.deps.store.vaultTokens.markRevoked(record.accessor, { ...base, decision: 'revoked', ...(Object.keys(detail).length ? { detail } : {}) });
    } catch (e) {
      // Revoked in Vault, not yet recorded: the next sweep revokes again (idempotent) and records it.
      this.deps.log.error({ accessor: record.accessor, err: (e as Error).message }, 'revoked a Vault token but could not record it');
    }
    this.deps.log.info({ sessionId: s.id, accessor: record.accessor, reason, ...(found ? {} : { alreadyGoneInVault: true }) },
      found ? 'Vault token revoked' : 'Vault token already gone in Vault; recorded as revoked');
    return { result: { accessor: record.accessor, revoked: true }, unreachable: false };
  }

  /** Gives up on a token that could not be revoked and is past the latest it can live. */
  private async lapse(record: VaultTokenRecord, s: TaskSession): Promise<RevocationResult> {
    const deadBy = record.deadBy ?? record.createdAt + VAULT_DEFAULT_MAX_TTL_SECONDS * 1000;
    const reason = `${s.endReason ?? 'expired'}; not revoked after ${record.revokeAttempts} attempt(s), and past ${new Date(deadBy).toISOString()}, `
      + 'the latest Vault can keep it alive: it has expired in Vault; no more retries';
    try {
      const changed = await this.deps.store.vaultTokens.markLapsed(record.accessor, {
        event: 'vault.revoke', decision: 'expired', developer: s.developer, template: s.template, sessionId: s.id, vaultAccessor: record.accessor,
        reason, expiration: new Date(deadBy).toISOString(), detail: { failedAttempts: record.revokeAttempts, lastError: record.lastError },
      });
      if (changed) this.deps.log.warn({ sessionId: s.id, accessor: record.accessor, attempts: record.revokeAttempts, deadBy: new Date(deadBy).toISOString() }, 'gave up revoking a Vault token: it is past the latest it can live');
    } catch (e) {
      this.deps.log.error({ accessor: record.accessor, err: (e as Error).message }, 'could not record an expired Vault token; the next sweep tries again');
    }
    return { accessor: record.accessor, revoked: false, lapsed: true };
  }

  /**
   * A create that failed is audited. When its outcome is unknown (no answer in time, a connection
   * lost mid-request, a 500/502/504) Vault may have created the token and only the answer was lost:
   * the record then says so, with the token's display name (what Vault's own audit log and
   * `auth/token/lookup-accessor` show) and the latest it can live. Nobody holds such a token (it
   * never left Vault), so nobody can renew it: it dies at its explicit max TTL, counted from at the
   * latest now. A refused role check (`roleCheckRefused`) asked Vault for nothing but the role.
   */
  private async auditFailedCreate(e: unknown, req: VaultTokenRequest, base: Omit<AuditEvent, 'decision'>, roleCheckRefused = false): Promise<void> {
    const detail: Record<string, unknown> = { role: req.role, policies: req.body.policies, ...(roleCheckRefused ? { roleCheckRefused } : {}) };
    let reason = (e as Error).message;
    let expiration: string | undefined;
    if (!roleCheckRefused && outcomeUnknown(e)) {
      const displayName = `token-${req.body.display_name}`;
      expiration = new Date(this.deps.now() + req.explicitMaxTtlSeconds * 1000).toISOString();
      reason += `; Vault may have created the token anyway (display_name ${displayName}, accessor unknown to the broker); if so it expires by ${expiration}`;
      Object.assign(detail, { mayExist: true, displayName, expiresBy: expiration });
      this.deps.log.warn({ sessionId: base.sessionId, displayName, expiresBy: expiration, err: (e as Error).message },
        'a Vault token create got no answer: Vault may have created a token the broker never received (see docs/vault.md)');
    }
    try {
      await this.deps.store.auditLog.append({ ...base, decision: 'failed', reason, ...(expiration ? { expiration } : {}), detail });
    } catch { /* the Vault failure is what the caller needs to see */ }
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
