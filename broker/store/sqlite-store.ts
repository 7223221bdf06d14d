import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { BrokerError } from '../errors.js';
import type { AuditEvent, AuditRecord } from './audit-event.js';

export interface TaskSession {
  id: string;
  developer: string;
  template: string;
  params: Record<string, string>;
  reason: string;
  agent: string;
  roleSessionName: string;
  createdAt: number;
  expiresAt: number;
  endedAt: number | null;
  endReason: string | null;
}

/** A Vault token issued under a task session: its accessor, never the token. */
export interface VaultTokenRecord {
  accessor: string;
  sessionId: string;
  createdAt: number;
  /** When Vault lets it die at the latest, unless renewed (issue time + its explicit max TTL). */
  expiresAt: number;
  revokedAt: number | null;
  /** Failed revocation attempts so far (Vault unreachable, …); retried by the sweeper. */
  revokeAttempts: number;
  lastError: string | null;
  /** When the last revocation attempt failed: the sweeper retries the least recently tried first. */
  lastAttemptAt: number | null;
  /**
   * The latest Vault can keep the token alive, renewals included (null: not known, rows written
   * before it was recorded). Past it a revocation that keeps failing is given up: the token is dead.
   */
  deadBy: number | null;
  /** When the broker stopped retrying a failed revocation because the token was past `deadBy`. */
  lapsedAt: number | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS task_sessions (
  id TEXT PRIMARY KEY,
  developer TEXT NOT NULL,
  template TEXT NOT NULL,
  params TEXT NOT NULL,
  reason TEXT NOT NULL,
  agent TEXT NOT NULL,
  role_session_name TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  ended_at INTEGER,
  end_reason TEXT
);
CREATE INDEX IF NOT EXISTS task_sessions_developer ON task_sessions (developer, ended_at, expires_at);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  at TEXT NOT NULL,
  event TEXT NOT NULL,
  decision TEXT NOT NULL,
  developer TEXT,
  template TEXT,
  session_id TEXT,
  reason TEXT,
  access_key_id TEXT,
  role_session_name TEXT,
  expiration TEXT,
  detail TEXT,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL,
  vault_accessor TEXT
);
-- The audit log is append-only: the database itself refuses edits, not just our code.
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
-- Vault tokens by accessor (a handle to look up and revoke a token, not the token), so every token
-- of a session can be revoked when it ends, and a failed revocation is retried until it succeeds.
CREATE TABLE IF NOT EXISTS vault_tokens (
  accessor TEXT PRIMARY KEY,
  session_id TEXT NOT NULL REFERENCES task_sessions (id),
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  revoked_at INTEGER,
  revoke_attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  last_attempt_at INTEGER,
  dead_by INTEGER,
  lapsed_at INTEGER
);
CREATE INDEX IF NOT EXISTS vault_tokens_session ON vault_tokens (session_id, revoked_at);
-- The records of one session (what was issued under it), for the sweep of starts that never completed.
CREATE INDEX IF NOT EXISTS audit_session ON audit (session_id, event, decision);
`;

/** Columns added to vault_tokens after it first shipped (ALTER TABLE ADD COLUMN on older stores). */
const VAULT_TOKEN_COLUMNS_ADDED = ['last_attempt_at INTEGER', 'dead_by INTEGER', 'lapsed_at INTEGER'];

const GENESIS = '0'.repeat(64);

interface SessionRow {
  id: string; developer: string; template: string; params: string; reason: string; agent: string;
  role_session_name: string; created_at: number; expires_at: number; ended_at: number | null; end_reason: string | null;
}

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

function toSession(r: SessionRow): TaskSession {
  return {
    id: r.id, developer: r.developer, template: r.template, params: JSON.parse(r.params) as Record<string, string>,
    reason: r.reason, agent: r.agent, roleSessionName: r.role_session_name, createdAt: r.created_at,
    expiresAt: r.expires_at, endedAt: r.ended_at, endReason: r.end_reason,
  };
}

/**
 * Canonical form of a record for the hash chain: fixed field order, no whitespace ambiguity. Fields
 * added later (the Vault accessor) are appended only when set, so records written before they
 * existed keep their hashes and an old log still verifies.
 */
function recordHash(prevHash: string, at: string, e: AuditEvent): string {
  const canonical = JSON.stringify([
    prevHash, at, e.event, e.decision, e.developer ?? null, e.template ?? null, e.sessionId ?? null,
    e.reason ?? null, e.accessKeyId ?? null, e.roleSessionName ?? null, e.expiration ?? null,
    e.detail ? JSON.stringify(e.detail) : null,
    ...(e.vaultAccessor ? [e.vaultAccessor] : []),
  ]);
  return createHash('sha256').update(canonical).digest('hex');
}

/**
 * Task sessions and the audit log in one embedded SQLite file (node:sqlite, no native build).
 * Every write that records a decision throws `audit_unavailable` when it cannot be committed, and
 * callers issue nothing in that case (fail closed).
 */
export class SqliteStore {
  private readonly db: DatabaseSync;
  private readonly stmts: Record<string, StatementSync>;
  private readonly now: () => number;

  constructor(path: string, options: { busyTimeoutMs?: number; now?: () => number } = {}) {
    this.now = options.now ?? Date.now;
    try {
      if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
      this.db = new DatabaseSync(path, { timeout: options.busyTimeoutMs ?? 2000 });
      this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;');
      this.db.exec(SCHEMA);
      // Stores created before Vault support: add the accessor column (ALTER adds no rows, so the
      // append-only triggers are not involved).
      const columns = this.db.prepare('PRAGMA table_info(audit)').all() as { name: string }[];
      if (!columns.some((c) => c.name === 'vault_accessor')) this.db.exec('ALTER TABLE audit ADD COLUMN vault_accessor TEXT');
      const vaultColumns = new Set((this.db.prepare('PRAGMA table_info(vault_tokens)').all() as { name: string }[]).map((c) => c.name));
      for (const column of VAULT_TOKEN_COLUMNS_ADDED) {
        if (!vaultColumns.has(column.split(' ')[0]!)) this.db.exec(`ALTER TABLE vault_tokens ADD COLUMN ${column}`);
      }
    } catch (e) {
      throw new BrokerError('audit_unavailable', `cannot open the store at ${path}: ${(e as Error).message}`, {
        cause: e,
        hint: 'check that the directory exists and is writable by the broker',
      });
    }
    const q = (sql: string) => this.db.prepare(sql);
    this.stmts = {
      lastHash: q('SELECT hash FROM audit ORDER BY seq DESC LIMIT 1'),
      insertAudit: q(`INSERT INTO audit (at, event, decision, developer, template, session_id, reason, access_key_id,
        role_session_name, expiration, detail, prev_hash, hash, vault_accessor) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)`),
      insertSession: q(`INSERT INTO task_sessions (id, developer, template, params, reason, agent, role_session_name,
        created_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?)`),
      getSession: q('SELECT * FROM task_sessions WHERE id = ?'),
      active: q('SELECT * FROM task_sessions WHERE developer = ? AND ended_at IS NULL AND expires_at > ? ORDER BY created_at'),
      allActive: q('SELECT * FROM task_sessions WHERE ended_at IS NULL AND expires_at > ? ORDER BY created_at'),
      end: q('UPDATE task_sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL'),
      setAgent: q('UPDATE task_sessions SET agent = ? WHERE id = ? AND ended_at IS NULL'),
      expiredOpen: q('SELECT * FROM task_sessions WHERE ended_at IS NULL AND expires_at <= ? ORDER BY expires_at'),
      // Open sessions created before a cutoff whose start never completed: the last grant of a start
      // is the AWS one when it has one (task-session-service.ts issues Vault first), so complete
      // means a `credentials.issue` issued record, or for a Vault-only start a `vault.issue` one.
      incompleteStarts: q(`SELECT s.* FROM task_sessions s
        WHERE s.ended_at IS NULL AND s.expires_at > ? AND s.created_at <= ?
        AND NOT EXISTS (SELECT 1 FROM audit a WHERE a.session_id = s.id AND a.event = 'credentials.issue' AND a.decision = 'issued')
        AND (EXISTS (SELECT 1 FROM audit a, json_each(a.detail, '$.grants') g
                     WHERE a.session_id = s.id AND a.event = 'session.start' AND a.decision = 'allowed' AND g.value = 'aws')
             OR NOT EXISTS (SELECT 1 FROM audit a WHERE a.session_id = s.id AND a.event = 'vault.issue' AND a.decision = 'issued'))
        ORDER BY s.created_at LIMIT ?`),
      audit: q('SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?'),
      insertVaultToken: q('INSERT INTO vault_tokens (accessor, session_id, created_at, expires_at, dead_by) VALUES (?,?,?,?,?)'),
      sessionOpen: q('SELECT 1 AS open FROM task_sessions WHERE id = ? AND ended_at IS NULL AND expires_at > ?'),
      vaultTokensOf: q('SELECT * FROM vault_tokens WHERE session_id = ? ORDER BY created_at, accessor'),
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

  /** Runs `fn` in one IMMEDIATE transaction; any failure to commit is an audit failure. */
  private write<T>(what: string, fn: () => T): T {
    try {
      this.db.exec('BEGIN IMMEDIATE');
    } catch (e) {
      throw this.unavailable(what, e);
    }
    try {
      const result = fn();
      this.db.exec('COMMIT');
      return result;
    } catch (e) {
      try { this.db.exec('ROLLBACK'); } catch { /* already rolled back */ }
      if (e instanceof BrokerError) throw e;
      throw this.unavailable(what, e);
    }
  }

  private unavailable(what: string, e: unknown): BrokerError {
    return new BrokerError('audit_unavailable', `the audit log could not record ${what}; nothing was issued`, {
      cause: e,
      hint: 'the broker fails closed when it cannot write its audit log; check the store (disk, locks, permissions)',
    });
  }

  private appendAudit(e: AuditEvent): void {
    const prev = (this.stmts.lastHash!.get() as { hash: string } | undefined)?.hash ?? GENESIS;
    const at = new Date(this.now()).toISOString();
    this.stmts.insertAudit!.run(
      at, e.event, e.decision, e.developer ?? null, e.template ?? null, e.sessionId ?? null, e.reason ?? null,
      e.accessKeyId ?? null, e.roleSessionName ?? null, e.expiration ?? null,
      e.detail ? JSON.stringify(e.detail) : null, prev, recordHash(prev, at, e), e.vaultAccessor ?? null,
    );
  }

  /** Appends one audit record, committed before this returns. */
  audit(e: AuditEvent): void {
    this.write(`${e.event} ${e.decision}`, () => this.appendAudit(e));
  }

  /** Creates a session and its audit record atomically. */
  createSession(s: Omit<TaskSession, 'endedAt' | 'endReason'>, e: AuditEvent): void {
    this.write(`${e.event} ${e.decision}`, () => {
      this.stmts.insertSession!.run(s.id, s.developer, s.template, JSON.stringify(s.params), s.reason, s.agent,
        s.roleSessionName, s.createdAt, s.expiresAt);
      this.appendAudit(e);
    });
  }

  /** Ends a session (if still open) and records why; returns false if it had already ended. */
  endSession(id: string, reason: string, e: AuditEvent): boolean {
    return this.write(`${e.event} ${e.decision}`, () => {
      const changed = this.stmts.end!.run(this.now(), reason, id).changes > 0;
      if (changed) this.appendAudit(e);
      return changed;
    });
  }

  /** Changes the agent of an open session and records it, atomically; false if it had ended. */
  setAgent(id: string, agent: string, e: AuditEvent): boolean {
    return this.write(`${e.event} ${e.decision}`, () => {
      const changed = this.stmts.setAgent!.run(agent, id).changes > 0;
      if (changed) this.appendAudit(e);
      return changed;
    });
  }

  /** Open sessions created at or before `createdBefore` whose first issue has no `issued` record. */
  incompleteStarts(createdBefore: number, limit = 500): TaskSession[] {
    return (this.stmts.incompleteStarts!.all(this.now(), createdBefore, limit) as unknown as SessionRow[]).map(toSession);
  }

  /** Sessions past their end that nobody ended yet (the sweeper ends them as `expired`). */
  expiredOpenSessions(): TaskSession[] {
    return (this.stmts.expiredOpen!.all(this.now()) as unknown as SessionRow[]).map(toSession);
  }

  /**
   * Records a Vault token's accessor with its audit record, atomically, and says whether its session
   * was still open in that same transaction. If so, `issued` is appended; if the session ended (or
   * expired) while the token was being created, `ended` is appended instead, and the row is kept
   * unrevoked under the ended session, so the sweeper revokes it if the caller cannot.
   */
  recordVaultToken(t: Pick<VaultTokenRecord, 'accessor' | 'sessionId' | 'createdAt' | 'expiresAt' | 'deadBy'>, issued: AuditEvent, ended: AuditEvent): boolean {
    return this.write(`${issued.event} ${issued.decision}`, () => {
      const open = this.stmts.sessionOpen!.get(t.sessionId, this.now()) !== undefined;
      this.stmts.insertVaultToken!.run(t.accessor, t.sessionId, t.createdAt, t.expiresAt, t.deadBy);
      this.appendAudit(open ? issued : ended);
      return open;
    });
  }

  vaultTokens(sessionId: string, options: { unrevokedOnly?: boolean } = {}): VaultTokenRecord[] {
    const stmt = options.unrevokedOnly ? this.stmts.unrevokedOf! : this.stmts.vaultTokensOf!;
    return (stmt.all(sessionId) as unknown as VaultTokenRow[]).map(toVaultToken);
  }

  /** Unrevoked tokens of sessions that have ended or expired: what the sweeper revokes, least recently tried first. */
  vaultTokensToRevoke(limit = 500): VaultTokenRecord[] {
    return (this.stmts.toRevoke!.all(this.now(), limit) as unknown as VaultTokenRow[]).map(toVaultToken);
  }

  /**
   * Tokens still to revoke whose revocation has failed before and that are dead anyway: `deadBy`
   * (or, unknown, `createdAt + fallbackMs`) is at or before `cutoff`.
   */
  vaultTokensPastDeadBy(cutoff: number, fallbackMs: number, limit = 500): VaultTokenRecord[] {
    return (this.stmts.pastDeadBy!.all(this.now(), fallbackMs, cutoff, limit) as unknown as VaultTokenRow[]).map(toVaultToken);
  }

  /** Stops retrying a token's revocation (it is past the latest it can live) and records why; false if already settled. */
  markVaultTokenLapsed(accessor: string, e: AuditEvent): boolean {
    return this.write(`${e.event} ${e.decision}`, () => {
      const changed = this.stmts.markLapsed!.run(this.now(), accessor).changes > 0;
      if (changed) this.appendAudit(e);
      return changed;
    });
  }

  /** Marks a token revoked and records it; false if it already was. */
  markVaultTokenRevoked(accessor: string, e: AuditEvent): boolean {
    return this.write(`${e.event} ${e.decision}`, () => {
      const changed = this.stmts.markRevoked!.run(this.now(), accessor).changes > 0;
      if (changed) this.appendAudit(e);
      return changed;
    });
  }

  /** A failed revocation: counted, its error kept (no secret in it), audited when `e` is given. */
  recordVaultRevokeFailure(accessor: string, error: string, e?: AuditEvent): void {
    this.write(`${e?.event ?? 'vault.revoke'} failure`, () => {
      this.stmts.revokeFailed!.run(error.slice(0, 1000), this.now(), accessor);
      if (e) this.appendAudit(e);
    });
  }

  getSession(id: string): TaskSession | undefined {
    const r = this.stmts.getSession!.get(id) as SessionRow | undefined;
    return r ? toSession(r) : undefined;
  }

  activeSessions(developer?: string): TaskSession[] {
    const now = this.now();
    const rows = developer === undefined ? this.stmts.allActive!.all(now) : this.stmts.active!.all(developer, now);
    return (rows as unknown as SessionRow[]).map(toSession);
  }

  auditRecords(afterSeq = 0, limit = 1000): AuditRecord[] {
    return (this.stmts.audit!.all(afterSeq, limit) as Record<string, unknown>[]).map((r) => ({
      seq: r.seq as number, at: r.at as string, hash: r.hash as string,
      event: r.event as AuditRecord['event'], decision: r.decision as AuditRecord['decision'],
      developer: (r.developer as string | null) ?? undefined, template: (r.template as string | null) ?? undefined,
      sessionId: (r.session_id as string | null) ?? undefined, reason: (r.reason as string | null) ?? undefined,
      accessKeyId: (r.access_key_id as string | null) ?? undefined,
      roleSessionName: (r.role_session_name as string | null) ?? undefined,
      expiration: (r.expiration as string | null) ?? undefined,
      vaultAccessor: (r.vault_accessor as string | null) ?? undefined,
      detail: r.detail ? (JSON.parse(r.detail as string) as Record<string, unknown>) : undefined,
    }));
  }

  /** Recomputes the hash chain; returns the first broken seq, or null when intact. */
  verifyAuditChain(): number | null {
    let prev = GENESIS;
    for (const r of this.auditRecords(0, Number.MAX_SAFE_INTEGER)) {
      if (recordHash(prev, r.at, r) !== r.hash) return r.seq;
      prev = r.hash;
    }
    return null;
  }

  close(): void {
    this.db.close();
  }
}
