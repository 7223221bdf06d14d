import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { BrokerError } from '../../errors.js';

/**
 * One embedded SQLite file (node:sqlite, no native build) shared by the SQLite repositories, and
 * their one transaction helper: every write that records a decision runs in one IMMEDIATE
 * transaction with its audit record, and any failure to commit is an audit failure.
 */
/** Told of each transaction that records a decision with its audit record: committed or not, and its duration. */
export type AuditWriteObserver = (ok: boolean, seconds: number) => void;

export class SqliteDatabase {
  readonly db: DatabaseSync;
  /** The service's clock (tests move it). */
  readonly now: () => number;
  /** Set by the audit log when it appends a record in the transaction under way. */
  auditAppended = false;
  private readonly onAuditWrite: AuditWriteObserver | undefined;

  constructor(path: string, options: { busyTimeoutMs?: number | undefined; now: () => number; onAuditWrite?: AuditWriteObserver | undefined }) {
    this.now = options.now;
    this.onAuditWrite = options.onAuditWrite;
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new DatabaseSync(path, { timeout: options.busyTimeoutMs ?? 2000 });
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;');
  }

  prepare(sql: string): StatementSync {
    return this.db.prepare(sql);
  }

  /**
   * Runs `fn` in one IMMEDIATE transaction; any failure to commit is an audit failure (fail closed).
   * A transaction that appended an audit record is timed for `onAuditWrite`, from BEGIN to COMMIT,
   * and so is one that could not begin (store locked past the busy timeout, or unwritable), unless
   * `audit: false` says it records no decision.
   */
  write<T>(what: string, fn: () => T, options: { audit?: boolean } = {}): T {
    const start = performance.now();
    const report = (ok: boolean) => this.onAuditWrite?.(ok, (performance.now() - start) / 1000);
    try {
      this.db.exec('BEGIN IMMEDIATE');
    } catch (e) {
      if (options.audit !== false) report(false);
      throw unavailable(what, e);
    }
    this.auditAppended = false;
    try {
      const result = fn();
      this.db.exec('COMMIT');
      if (this.auditAppended) report(true);
      return result;
    } catch (e) {
      try { this.db.exec('ROLLBACK'); } catch { /* already rolled back */ }
      if (this.auditAppended) report(false);
      if (e instanceof BrokerError) throw e;
      throw unavailable(what, e);
    } finally {
      this.auditAppended = false;
    }
  }

  close(): void {
    this.db.close();
  }
}

function unavailable(what: string, e: unknown): BrokerError {
  return new BrokerError('audit_unavailable', `the audit log could not record ${what}; nothing was issued`, {
    cause: e,
    hint: 'the broker fails closed when it cannot write its audit log; check the store (disk, locks, permissions)',
  });
}
