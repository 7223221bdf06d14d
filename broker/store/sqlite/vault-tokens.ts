import type { StatementSync } from 'node:sqlite';
import type { AuditEvent } from '../audit-event.js';
import type { NewVaultTokenRecord, VaultTokenRecord, VaultTokenRepository } from '../store.js';
import type { SqliteAuditLog } from './audit-log.js';
import type { SqliteDatabase } from './database.js';

interface VaultTokenRow {
  accessor: string; session_id: string; created_at: number; expires_at: number; revoked_at: number | null;
  revoke_attempts: number; last_error: string | null; last_attempt_at: number | null; dead_by: number | null; lapsed_at: number | null;
}

function toVaultToken(r: VaultTokenRow): VaultTokenRecord {
  return {
    accessor: r.accessor, sessionId: r.session_id, createdAt: r.created_at, expiresAt: r.expires_at, revokedAt: r.revoked_at,
    revokeAttempts: r.revoke_attempts, lastError: r.last_error, lastAttemptAt: r.last_attempt_at, deadBy: r.dead_by, lapsedAt: r.lapsed_at,
  };
}

const rows = (stmt: StatementSync, ...args: (string | number)[]) => (stmt.all(...args) as unknown as VaultTokenRow[]).map(toVaultToken);

/** Vault tokens by accessor in SQLite (`vault_tokens`); each change with its audit record, in one transaction. */
export class SqliteVaultTokenRepository implements VaultTokenRepository {
  private readonly stmts;

  constructor(private readonly sql: SqliteDatabase, private readonly audit: SqliteAuditLog) {
    const q = (s: string) => sql.prepare(s);
    this.stmts = {
      insert: q('INSERT INTO vault_tokens (accessor, session_id, created_at, expires_at, dead_by) VALUES (?,?,?,?,?)'),
      sessionOpen: q('SELECT 1 AS open FROM task_sessions WHERE id = ? AND ended_at IS NULL AND expires_at > ?'),
      ofSession: q('SELECT * FROM vault_tokens WHERE session_id = ? ORDER BY created_at, accessor'),
      unrevokedOf: q('SELECT * FROM vault_tokens WHERE session_id = ? AND revoked_at IS NULL ORDER BY created_at, accessor'),
      // Never tried first, then the least recently tried: rows that keep failing go to the back, so
      // they cannot starve newer ones out of the LIMIT.
      toRevoke: q(`SELECT v.* FROM vault_tokens v JOIN task_sessions s ON s.id = v.session_id
        WHERE v.revoked_at IS NULL AND v.lapsed_at IS NULL AND (s.ended_at IS NOT NULL OR s.expires_at <= ?)
        ORDER BY COALESCE(v.last_attempt_at, 0), v.created_at LIMIT ?`),
      // Pending rows whose revocation failed at least once and whose token is past the latest it can
      // live (rows without dead_by: created_at + the fallback bound given).
      pastDeadBy: q(`SELECT v.* FROM vault_tokens v JOIN task_sessions s ON s.id = v.session_id
        WHERE v.revoked_at IS NULL AND v.lapsed_at IS NULL AND v.revoke_attempts > 0 AND (s.ended_at IS NOT NULL OR s.expires_at <= ?)
        AND COALESCE(v.dead_by, v.created_at + ?) <= ? ORDER BY v.created_at LIMIT ?`),
      markRevoked: q('UPDATE vault_tokens SET revoked_at = ? WHERE accessor = ? AND revoked_at IS NULL'),
      markLapsed: q('UPDATE vault_tokens SET lapsed_at = ? WHERE accessor = ? AND revoked_at IS NULL AND lapsed_at IS NULL'),
      revokeFailed: q('UPDATE vault_tokens SET revoke_attempts = revoke_attempts + 1, last_error = ?, last_attempt_at = ? WHERE accessor = ? AND revoked_at IS NULL'),
    };
  }

  async record(t: NewVaultTokenRecord, issued: AuditEvent, ended: AuditEvent): Promise<boolean> {
    return this.sql.write(`${issued.event} ${issued.decision}`, () => {
      const open = this.stmts.sessionOpen.get(t.sessionId, this.sql.now()) !== undefined;
      this.stmts.insert.run(t.accessor, t.sessionId, t.createdAt, t.expiresAt, t.deadBy);
      this.audit.appendInTransaction(open ? issued : ended);
      return open;
    });
  }

  async ofSession(sessionId: string, options: { unrevokedOnly?: boolean } = {}): Promise<VaultTokenRecord[]> {
    return rows(options.unrevokedOnly ? this.stmts.unrevokedOf : this.stmts.ofSession, sessionId);
  }

  async toRevoke(limit = 500): Promise<VaultTokenRecord[]> {
    return rows(this.stmts.toRevoke, this.sql.now(), limit);
  }

  async pastDeadBy(cutoff: number, fallbackMs: number, limit = 500): Promise<VaultTokenRecord[]> {
    return rows(this.stmts.pastDeadBy, this.sql.now(), fallbackMs, cutoff, limit);
  }

  async markLapsed(accessor: string, e: AuditEvent): Promise<boolean> {
    return this.sql.write(`${e.event} ${e.decision}`, () => {
      const changed = this.stmts.markLapsed.run(this.sql.now(), accessor).changes > 0;
      if (changed) this.audit.appendInTransaction(e);
      return changed;
    });
  }

  async markRevoked(accessor: string, e: AuditEvent): Promise<boolean> {
    return this.sql.write(`${e.event} ${e.decision}`, () => {
      const changed = this.stmts.markRevoked.run(this.sql.now(), accessor).changes > 0;
      if (changed) this.audit.appendInTransaction(e);
      return changed;
    });
  }

  async recordRevokeFailure(accessor: string, error: string, e?: AuditEvent): Promise<void> {
    this.sql.write(`${e?.event ?? 'vault.revoke'} failure`, () => {
      this.stmts.revokeFailed.run(error.slice(0, 1000), this.sql.now(), accessor);
      if (e) this.audit.appendInTransaction(e);
    });
  }
}
