import type { StatementSync } from 'node:sqlite';
import { GENESIS_HASH, recordHash } from '../audit-chain.js';
import type { AuditEvent, AuditRecord } from '../audit-event.js';
import type { AuditLog } from '../store.js';
import type { SqliteDatabase } from './database.js';

/** The audit log in SQLite: the `audit` table, append-only by trigger, hash-chained (audit-chain.ts). */
export class SqliteAuditLog implements AuditLog {
  private readonly lastHash: StatementSync;
  private readonly insert: StatementSync;
  private readonly after: StatementSync;
  private readonly session: StatementSync;
  private readonly listeners = new Set<() => void>();
  private notifying = false;

  constructor(private readonly sql: SqliteDatabase) {
    this.lastHash = sql.prepare('SELECT hash FROM audit ORDER BY seq DESC LIMIT 1');
    this.insert = sql.prepare(`INSERT INTO audit (at, event, decision, developer, template, session_id, reason, access_key_id,
      role_session_name, expiration, detail, prev_hash, hash, vault_accessor) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)`);
    this.after = sql.prepare('SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?');
    this.session = sql.prepare('SELECT * FROM audit WHERE session_id = ? ORDER BY seq LIMIT ?');
  }

  /** Appends a record inside the caller's transaction (SqliteDatabase.write): the other repositories' half of "decision + audit record". */
  appendInTransaction(e: AuditEvent): void {
    const prev = (this.lastHash.get() as { hash: string } | undefined)?.hash ?? GENESIS_HASH;
    const at = new Date(this.sql.now()).toISOString();
    this.insert.run(
      at, e.event, e.decision, e.developer ?? null, e.template ?? null, e.sessionId ?? null, e.reason ?? null,
      e.accessKeyId ?? null, e.roleSessionName ?? null, e.expiration ?? null,
      e.detail ? JSON.stringify(e.detail) : null, prev, recordHash(prev, at, e), e.vaultAccessor ?? null,
    );
    // The transaction is synchronous (node:sqlite), so a callback on a later turn runs after its
    // COMMIT (or ROLLBACK: then a listener finds nothing new, which is harmless).
    if (this.listeners.size > 0 && !this.notifying) {
      this.notifying = true;
      setImmediate(() => {
        this.notifying = false;
        for (const l of this.listeners) l();
      });
    }
  }

  onAppend(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => { this.listeners.delete(listener); };
  }

  async append(e: AuditEvent): Promise<void> {
    this.sql.write(`${e.event} ${e.decision}`, () => this.appendInTransaction(e));
  }

  async records(afterSeq = 0, limit = 1000): Promise<AuditRecord[]> {
    return this.read(afterSeq, limit);
  }

  async verify(): Promise<number | null> {
    let prev = GENESIS_HASH;
    for (const r of this.read(0, Number.MAX_SAFE_INTEGER)) {
      if (recordHash(prev, r.at, r) !== r.hash) return r.seq;
      prev = r.hash;
    }
    return null;
  }

  async ofSession(sessionId: string, limit = 10_000): Promise<AuditRecord[]> {
    return (this.session.all(sessionId, limit) as Record<string, unknown>[]).map(toRecord);
  }

  private read(afterSeq: number, limit: number): AuditRecord[] {
    return (this.after.all(afterSeq, limit) as Record<string, unknown>[]).map(toRecord);
  }
}

function toRecord(r: Record<string, unknown>): AuditRecord {
  return {
    seq: r.seq as number, at: r.at as string, hash: r.hash as string,
    event: r.event as AuditRecord['event'], decision: r.decision as AuditRecord['decision'],
    developer: (r.developer as string | null) ?? undefined, template: (r.template as string | null) ?? undefined,
    sessionId: (r.session_id as string | null) ?? undefined, reason: (r.reason as string | null) ?? undefined,
    accessKeyId: (r.access_key_id as string | null) ?? undefined,
    roleSessionName: (r.role_session_name as string | null) ?? undefined,
    expiration: (r.expiration as string | null) ?? undefined,
    vaultAccessor: (r.vault_accessor as string | null) ?? undefined,
    detail: r.detail ? (JSON.parse(r.detail as string) as Record<string, unknown>) : undefined,
  };
}
