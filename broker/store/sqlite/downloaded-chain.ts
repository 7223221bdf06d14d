import { DatabaseSync } from 'node:sqlite';
import type { ChainRow, ChainSource } from '../audit-verify.js';
import { sqliteChainSource } from './audit-chain-source.js';

/**
 * The audit chain downloaded from the service (`broker audit verify --server`), kept for the verifier
 * in a private temporary SQLite database: SQLite's "" filename, a file that is removed as soon as it
 * is opened and lives only while the connection does (https://sqlite.org/inmemorydb.html, "Temporary
 * Databases"), so a log of millions of records is not all held in memory. Audit records hold no
 * secret (audit-event.ts). The verifier then reads it as it reads a store file (the same queries),
 * except for what only the service's store can say of itself: its sequence counter and its
 * triggers, which are what the service reported (`store`), or unknown.
 */
export class DownloadedChain {
  private readonly db = new DatabaseSync('');
  private readonly insert;
  private count = 0;

  constructor() {
    // The columns the verifier reads (audit-chain-source.ts), no constraint: rows are kept as they came.
    this.db.exec(`PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
      CREATE TABLE audit (seq INTEGER PRIMARY KEY, at, event, decision, developer, template, session_id, reason, access_key_id,
        role_session_name, expiration, detail, vault_accessor, prev_hash, hash, hash_version)`);
    this.insert = this.db.prepare(`INSERT INTO audit (seq, at, event, decision, developer, template, session_id, reason, access_key_id,
      role_session_name, expiration, detail, vault_accessor, prev_hash, hash, hash_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`);
  }

  /** One page, in seq order after the pages before it (a seq seen twice is an error of the service's paging). */
  add(rows: ChainRow[]): void {
    this.db.exec('BEGIN');
    try {
      for (const r of rows) this.insert.run(...r);
      this.db.exec('COMMIT');
    } catch (e) {
      this.db.exec('ROLLBACK');
      throw e;
    }
    this.count += rows.length;
  }

  get records(): number { return this.count; }

  /** The chain as the verifier reads it; the store's counter and guards as `reported` (undefined: not known). */
  source(reported: { sequenceMax: number | undefined; missingGuards: string[] | undefined }): ChainSource {
    const src = sqliteChainSource(this.db);
    return { ...src, sequenceMax: () => reported.sequenceMax, missingGuards: () => reported.missingGuards ?? [] };
  }

  hasCheckpoints(): boolean {
    return this.db.prepare("SELECT 1 FROM audit WHERE event = 'audit.checkpoint' LIMIT 1").get() !== undefined;
  }

  close(): void {
    this.db.close();
  }
}
