import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { BrokerError } from '../../errors.js';

/**
 * One embedded SQLite file (node:sqlite, no native build) shared by the SQLite repositories, and
 * their one transaction helper: every write that records a decision runs in one IMMEDIATE
 * transaction with its audit record, and any failure to commit is an audit failure.
 */
export class SqliteDatabase {
  readonly db: DatabaseSync;
  /** The service's clock (tests move it). */
  readonly now: () => number;

  constructor(path: string, options: { busyTimeoutMs?: number | undefined; now: () => number }) {
    this.now = options.now;
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new DatabaseSync(path, { timeout: options.busyTimeoutMs ?? 2000 });
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;');
  }

  prepare(sql: string): StatementSync {
    return this.db.prepare(sql);
  }

  /** Runs `fn` in one IMMEDIATE transaction; any failure to commit is an audit failure (fail closed). */
  write<T>(what: string, fn: () => T): T {
    try {
      this.db.exec('BEGIN IMMEDIATE');
    } catch (e) {
      throw unavailable(what, e);
    }
    try {
      const result = fn();
      this.db.exec('COMMIT');
      return result;
    } catch (e) {
      try { this.db.exec('ROLLBACK'); } catch { /* already rolled back */ }
      if (e instanceof BrokerError) throw e;
      throw unavailable(what, e);
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
