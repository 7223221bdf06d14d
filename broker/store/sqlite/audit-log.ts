import type { StatementSync } from 'node:sqlite';
import { chainFields, GENESIS_HASH, HASH_VERSION, recordHashV2 } from '../audit-chain.js';
import type { AuditEvent, AuditRecord } from '../audit-event.js';
import { verifyAuditLog, type ChainSource } from '../audit-verify.js';
import type { AuditLog } from '../store.js';
import { sqliteChainSource } from './audit-chain-source.js';
import type { SqliteDatabase } from './database.js';

/** The audit log in SQLite: the `audit` table, append-only by trigger, hash-chained (audit-chain.ts). */
export class SqliteAuditLog implements AuditLog {
  private readonly last: StatementSync;
  private readonly lastCheckpoint: StatementSync;
  private readonly countBetween: StatementSync;
  private readonly uncovered: StatementSync;
  private chain: ChainSource | undefined;
  /**
   * Told of every record appended (after its transaction; a rolled-back one too): the checkpointer's
   * cue, which counts records. The sinks subscribe with onAppend, woken once per turn however many.
   */
  onRecord: ((e: AuditEvent) => void) | undefined;
  private readonly insert: StatementSync;
  private readonly after: StatementSync;
  private readonly session: StatementSync;
  private readonly listeners = new Set<() => void>();
  private notifying = false;

  constructor(private readonly sql: SqliteDatabase) {
    this.last = sql.prepare('SELECT seq, hash, event FROM audit ORDER BY seq DESC LIMIT 1');
    this.lastCheckpoint = sql.prepare("SELECT seq, detail FROM audit WHERE event = 'audit.checkpoint' ORDER BY seq DESC LIMIT 1");
    this.countBetween = sql.prepare('SELECT count(*) AS n FROM audit WHERE seq > ? AND seq <= ?');
    this.uncovered = sql.prepare("SELECT count(*) AS n FROM audit WHERE seq > ? AND event != 'audit.checkpoint'");
    this.insert = sql.prepare(`INSERT INTO audit (seq, at, event, decision, developer, template, session_id, reason, access_key_id,
      role_session_name, expiration, detail, prev_hash, hash, vault_accessor, hash_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`);
    this.after = sql.prepare('SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?');
    this.session = sql.prepare('SELECT * FROM audit WHERE session_id = ? ORDER BY seq LIMIT ?');
  }

  /** Appends a record inside the caller's transaction (SqliteDatabase.write): the other repositories' half of "decision + audit record". */
  appendInTransaction(e: AuditEvent): void {
    const last = this.head();
    const prev = last?.hash ?? GENESIS_HASH;
    // The seq is hashed, so it is chosen here (inside the caller's IMMEDIATE transaction: no other writer).
    const seq = (last?.seq ?? 0) + 1;
    const f = chainFields(new Date(this.sql.now()).toISOString(), e);
    this.insert.run(
      seq, f.at, f.event, f.decision, f.developer, f.template, f.sessionId, f.reason, f.accessKeyId, f.roleSessionName,
      f.expiration, f.detail, prev, recordHashV2(prev, seq, f), f.vaultAccessor, HASH_VERSION,
    );
    this.sql.auditAppended = true;
    const listener = this.onRecord;
    if (listener) queueMicrotask(() => listener(e));
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

  /** The last record: its seq, hash and event. */
  head(): { seq: number; hash: string; event: string } | undefined {
    return this.last.get() as { seq: number; hash: string; event: string } | undefined;
  }

  /** The last checkpoint record's seq and detail ({jws, seq, head, count}). */
  latestCheckpoint(): { seq: number; detail: { seq: number; head: string; count: number } } | undefined {
    const r = this.lastCheckpoint.get() as { seq: number; detail: string } | undefined;
    return r && { seq: r.seq, detail: JSON.parse(r.detail) as { seq: number; head: string; count: number } };
  }

  /** Records with afterSeq < seq <= throughSeq. */
  count(afterSeq: number, throughSeq: number): number {
    return (this.countBetween.get(afterSeq, throughSeq) as { n: number }).n;
  }

  /** Records after this seq that are not checkpoints (what a new checkpoint would cover). */
  recordsAfter(seq: number): number {
    return (this.uncovered.get(seq) as { n: number }).n;
  }

  /** The chain as the verifier reads it (store/audit-verify.ts). */
  chainSource(): ChainSource {
    return (this.chain ??= sqliteChainSource(this.sql.db));
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

  /** The chain and the store's own evidence only (no keys: checkpoint signatures are `broker audit verify`'s). */
  async verify(): Promise<number | null> {
    const r = await verifyAuditLog(this.chainSource(), { keys: undefined });
    const chain = r.problems.find((p) => p.seq !== null && p.kind !== 'unknown_kid');
    return chain?.seq ?? null;
  }

  async ofSession(sessionId: string, limit = 10_000): Promise<AuditRecord[]> {
    return (this.session.all(sessionId, limit) as Record<string, unknown>[]).map(toRecord);
  }

  private read(afterSeq: number, limit: number): AuditRecord[] {
    return (this.after.all(afterSeq, limit) as Record<string, unknown>[]).map(toRecord);
  }
}

/** A row of the `audit` table as a record (also read by audit-search.ts). */
export function toRecord(r: Record<string, unknown>): AuditRecord {
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
