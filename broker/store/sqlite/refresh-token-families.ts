import type { AuditEvent } from '../audit-event.js';
import {
  familyIsLive, type NewRefreshToken, type NewRefreshTokenFamily, type RefreshTokenFamilies, type RefreshTokenFamily, type RotationOutcome,
} from '../refresh-token-families.js';
import type { SqliteAuditLog } from './audit-log.js';
import type { SqliteDatabase } from './database.js';

interface FamilyRow {
  id: string; developer: string; email: string; groups: string; jkt: string; created_at: number; expires_at: number;
  revoked_at: number | null; revoke_reason: string | null; generation: number;
}

function toFamily(r: FamilyRow): RefreshTokenFamily {
  return {
    id: r.id, developer: r.developer, email: r.email, groups: JSON.parse(r.groups) as string[], jkt: r.jkt, createdAt: r.created_at,
    expiresAt: r.expires_at, revokedAt: r.revoked_at, revokeReason: r.revoke_reason, generation: r.generation,
  };
}

/** Refresh-token families in SQLite (`refresh_token_families`, `refresh_tokens`); each change with its audit record, in one transaction. */
export class SqliteRefreshTokenFamilies implements RefreshTokenFamilies {
  private readonly stmts;

  constructor(private readonly sql: SqliteDatabase, private readonly audit: SqliteAuditLog) {
    const q = (s: string) => sql.prepare(s);
    this.stmts = {
      insertFamily: q(`INSERT INTO refresh_token_families (id, developer, email, groups, jkt, created_at, expires_at, generation)
        VALUES (?,?,?,?,?,?,?,0)`),
      insertToken: q('INSERT INTO refresh_tokens (jti, family_id, generation, issued_at) VALUES (?,?,?,?)'),
      family: q('SELECT * FROM refresh_token_families WHERE id = ?'),
      token: q('SELECT family_id, generation, spent_at FROM refresh_tokens WHERE jti = ?'),
      spend: q('UPDATE refresh_tokens SET spent_at = ? WHERE jti = ? AND spent_at IS NULL'),
      nextGeneration: q('UPDATE refresh_token_families SET generation = generation + 1 WHERE id = ?'),
      revoke: q('UPDATE refresh_token_families SET revoked_at = ?, revoke_reason = ? WHERE id = ? AND revoked_at IS NULL'),
      liveOf: q('SELECT id FROM refresh_token_families WHERE developer = ? AND revoked_at IS NULL AND expires_at > ? ORDER BY created_at'),
      prune: q('DELETE FROM refresh_token_families WHERE expires_at < ?'),
    };
  }

  async start(f: NewRefreshTokenFamily, first: NewRefreshToken, e: AuditEvent): Promise<void> {
    this.sql.write(`${e.event} ${e.decision}`, () => {
      this.stmts.insertFamily.run(f.id, f.developer, f.email, JSON.stringify(f.groups), f.jkt, f.createdAt, f.expiresAt);
      this.stmts.insertToken.run(first.jti, f.id, 0, first.issuedAt);
      this.audit.appendInTransaction(e);
    });
  }

  async rotate(familyId: string, jti: string, next: NewRefreshToken, audit: { rotated: AuditEvent; reuse: AuditEvent; ended: AuditEvent }): Promise<RotationOutcome> {
    return this.sql.write(`${audit.rotated.event} ${audit.rotated.decision}`, (): RotationOutcome => {
      const token = this.stmts.token.get(jti) as { family_id: string; generation: number; spent_at: number | null } | undefined;
      if (!token || token.family_id !== familyId) return { kind: 'unknown' };
      const row = this.stmts.family.get(familyId) as FamilyRow | undefined;
      if (!row) return { kind: 'unknown' };
      const now = this.sql.now();
      const family = toFamily(row);
      if (!familyIsLive(family, now)) {
        this.audit.appendInTransaction(audit.ended);
        return { kind: 'family-ended', family };
      }
      // RFC 9700 §4.14.2: a refresh token used twice means two parties hold it; revoke them all.
      if (token.spent_at !== null || token.generation !== family.generation) {
        this.stmts.revoke.run(now, 'reuse of a spent refresh token', familyId);
        this.audit.appendInTransaction(audit.reuse);
        return { kind: 'reuse-detected', family: { ...family, revokedAt: now, revokeReason: 'reuse of a spent refresh token' } };
      }
      this.stmts.spend.run(now, jti);
      this.stmts.nextGeneration.run(familyId);
      this.stmts.insertToken.run(next.jti, familyId, family.generation + 1, next.issuedAt);
      this.audit.appendInTransaction(audit.rotated);
      return { kind: 'rotated', family: { ...family, generation: family.generation + 1 } };
    });
  }

  async revoke(familyId: string, reason: string, e: AuditEvent): Promise<boolean> {
    return this.sql.write(`${e.event} ${e.decision}`, () => {
      const changed = this.stmts.revoke.run(this.sql.now(), reason, familyId).changes > 0;
      if (changed) this.audit.appendInTransaction(e);
      return changed;
    });
  }

  async revokeDeveloper(developer: string, reason: string, e: AuditEvent): Promise<number> {
    return this.sql.write(`${e.event} ${e.decision}`, () => {
      const now = this.sql.now();
      const ids = (this.stmts.liveOf.all(developer, now) as { id: string }[]).map((r) => r.id);
      for (const id of ids) this.stmts.revoke.run(now, reason, id);
      if (ids.length) this.audit.appendInTransaction({ ...e, reason, detail: { ...e.detail, families: ids, count: ids.length } });
      return ids.length;
    });
  }

  async get(familyId: string): Promise<RefreshTokenFamily | undefined> {
    const r = this.stmts.family.get(familyId) as FamilyRow | undefined;
    return r ? toFamily(r) : undefined;
  }

  async prune(endedBefore: number): Promise<number> {
    return this.sql.write('refresh-token family pruning', () => Number(this.stmts.prune.run(endedBefore).changes), { audit: false });
  }
}
