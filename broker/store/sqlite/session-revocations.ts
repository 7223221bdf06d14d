import type { AuditEvent } from '../audit-event.js';
import type { NewRevocation, RevocationEntry, RevocationKind, RevocationRepository, RoleFallback, RoleRevocationState } from '../session-revocations.js';
import type { SqliteAuditLog } from './audit-log.js';
import type { SqliteDatabase } from './database.js';

interface EntryRow {
  seq: number; role_arn: string; kind: string; value: string; until: number; revoked_at: number; revoked_by: string;
  reason: string; applied_at: number | null; covered_at: number | null;
}
interface DocRow {
  role_arn: string; version: number; applied_version: number; applied_at: number | null;
  fallback_before: number | null; fallback_until: number | null; fallback_at: number | null; fallback_covered: number | null;
}

function toEntry(r: EntryRow): RevocationEntry {
  return {
    seq: r.seq, roleArn: r.role_arn, kind: r.kind as RevocationKind, value: r.value, until: r.until, revokedAt: r.revoked_at,
    revokedBy: r.revoked_by, reason: r.reason, appliedAt: r.applied_at, coveredAt: r.covered_at,
  };
}

function toFallback(d: DocRow): RoleFallback | null {
  return d.fallback_before === null ? null : { issuedBefore: d.fallback_before, until: d.fallback_until!, recordedAt: d.fallback_at!, covered: d.fallback_covered ?? 0 };
}

/** Revoked sessions in SQLite (`session_revocations`, `role_revocation_documents`); each change with its audit records. */
export class SqliteRevocationRepository implements RevocationRepository {
  private readonly stmts;

  constructor(private readonly sql: SqliteDatabase, private readonly audit: SqliteAuditLog) {
    const q = (s: string) => sql.prepare(s);
    this.stmts = {
      upsert: q(`INSERT INTO session_revocations (role_arn, kind, value, until, revoked_at, revoked_by, reason) VALUES (?,?,?,?,?,?,?)
        ON CONFLICT (role_arn, kind, value) DO UPDATE SET until = MAX(until, excluded.until)`),
      bump: q(`INSERT INTO role_revocation_documents (role_arn, version) VALUES (?, 1)
        ON CONFLICT (role_arn) DO UPDATE SET version = version + 1`),
      doc: q('SELECT * FROM role_revocation_documents WHERE role_arn = ?'),
      docs: q('SELECT * FROM role_revocation_documents ORDER BY role_arn'),
      entries: q('SELECT * FROM session_revocations WHERE role_arn = ? ORDER BY seq'),
      outdated: q('SELECT role_arn FROM role_revocation_documents WHERE version > applied_version ORDER BY role_arn'),
      applied: q('UPDATE role_revocation_documents SET applied_version = ?, applied_at = ? WHERE role_arn = ? AND applied_version < ?'),
      markEntries: q('UPDATE session_revocations SET applied_at = ? WHERE role_arn = ? AND seq <= ? AND applied_at IS NULL'),
      setFallback: q(`UPDATE role_revocation_documents SET fallback_before = ?, fallback_until = ?, fallback_at = ?, fallback_covered = ?,
        version = version + 1 WHERE role_arn = ?`),
      cover: q('UPDATE session_revocations SET covered_at = ? WHERE role_arn = ? AND seq <= ? AND covered_at IS NULL'),
      expiredRoles: q(`SELECT role_arn FROM session_revocations WHERE until <= ?
        UNION SELECT role_arn FROM role_revocation_documents WHERE fallback_until <= ?`),
      deleteExpired: q('DELETE FROM session_revocations WHERE role_arn = ? AND until <= ?'),
      clearFallback: q(`UPDATE role_revocation_documents SET fallback_before = NULL, fallback_until = NULL, fallback_at = NULL,
        fallback_covered = NULL WHERE role_arn = ? AND fallback_until <= ?`),
      bumpOnly: q('UPDATE role_revocation_documents SET version = version + 1 WHERE role_arn = ?'),
    };
  }

  async add(entries: NewRevocation[], events: AuditEvent[]): Promise<void> {
    this.sql.write('session.revoke', () => {
      const now = this.sql.now();
      for (const e of entries) this.stmts.upsert.run(e.roleArn, e.kind, e.value, e.until, now, e.revokedBy, e.reason);
      for (const role of new Set(entries.map((e) => e.roleArn))) this.stmts.bump.run(role);
      for (const e of events) this.audit.appendInTransaction(e);
    });
  }

  private stateOf(d: DocRow): RoleRevocationState {
    return {
      roleArn: d.role_arn, version: d.version, appliedVersion: d.applied_version, appliedAt: d.applied_at,
      entries: (this.stmts.entries.all(d.role_arn) as unknown as EntryRow[]).map(toEntry), fallback: toFallback(d),
    };
  }

  async state(roleArn: string): Promise<RoleRevocationState | undefined> {
    const d = this.stmts.doc.get(roleArn) as DocRow | undefined;
    return d ? this.stateOf(d) : undefined;
  }

  async roles(): Promise<RoleRevocationState[]> {
    return (this.stmts.docs.all() as unknown as DocRow[]).map((d) => this.stateOf(d));
  }

  async outdated(): Promise<string[]> {
    return (this.stmts.outdated.all() as { role_arn: string }[]).map((r) => r.role_arn);
  }

  async markApplied(roleArn: string, version: number, maxSeq: number, appliedAt: number, events: AuditEvent[]): Promise<void> {
    this.sql.write('session.revoke revoked', () => {
      if (this.stmts.applied.run(version, appliedAt, roleArn, version).changes === 0) return;
      this.stmts.markEntries.run(appliedAt, roleArn, maxSeq);
      for (const e of events) this.audit.appendInTransaction(e);
    });
  }

  async setFallback(roleArn: string, f: Omit<RoleFallback, 'recordedAt' | 'covered'>, maxSeq: number, e: AuditEvent): Promise<void> {
    this.sql.write(`${e.event} ${e.decision}`, () => {
      const now = this.sql.now();
      const covered = this.stmts.cover.run(now, roleArn, maxSeq).changes;
      const before = this.stmts.doc.get(roleArn) as DocRow | undefined;
      const total = Number(covered) + (before?.fallback_covered ?? 0);
      this.stmts.setFallback.run(f.issuedBefore, f.until, now, total, roleArn);
      this.audit.appendInTransaction(e);
    });
  }

  async prune(now: number): Promise<string[]> {
    return this.sql.write('revocation prune', () => {
      const roles = (this.stmts.expiredRoles.all(now, now) as { role_arn: string }[]).map((r) => r.role_arn);
      for (const role of roles) {
        this.stmts.deleteExpired.run(role, now);
        this.stmts.clearFallback.run(role, now);
        this.stmts.bumpOnly.run(role);
      }
      return roles;
    }, { audit: false });
  }
}
