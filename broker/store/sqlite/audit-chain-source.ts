import { existsSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { BrokerError } from '../../errors.js';
import type { CanonicalRow, ChainRow, ChainSource } from '../audit-verify.js';
import { AUDIT_TRIGGERS } from './migrations.js';

/**
 * The audit table as the verifier reads it (store/audit-verify.ts), rows as arrays in the order of
 * ChainRow. Columns added after the table first shipped are read as their default when a store
 * predates them (a read-only open does not migrate).
 */
export function sqliteChainSource(db: DatabaseSync): ChainSource {
  const have = auditColumns(db);
  const cols = chainColumns(have);
  const rows = db.prepare(`SELECT ${cols} FROM audit WHERE seq > ? AND seq <= ? ORDER BY seq`);
  rows.setReturnArrays(true);
  const one = db.prepare(`SELECT ${cols} FROM audit WHERE seq = ?`);
  one.setReturnArrays(true);
  // The canonical text of audit-chain.ts built by SQLite (json_array writes JSON as JSON.stringify
  // does, but for lone surrogates: such a record fails here and is checked again from its fields).
  const va = have.has('vault_accessor') ? 'vault_accessor' : 'NULL';
  const fields = `at, event, decision, developer, template, session_id, reason, access_key_id, role_session_name, expiration, detail`;
  const version = have.has('hash_version') ? 'hash_version' : '1';
  const canonical = db.prepare(`SELECT seq,
    CASE WHEN ${version} = 2 THEN json_array(2, seq, prev_hash, ${fields}, ${va})
         WHEN ${va} IS NULL OR ${va} = '' THEN json_array(prev_hash, ${fields})
         ELSE json_array(prev_hash, ${fields}, ${va}) END,
    prev_hash, hash, event, CASE WHEN event = 'audit.checkpoint' THEN detail END, ${version}
    FROM audit WHERE seq > ? AND seq <= ? ORDER BY seq`);
  canonical.setReturnArrays(true);
  const hashAt = db.prepare('SELECT hash FROM audit WHERE seq = ?');
  const seqOf = db.prepare('SELECT seq FROM audit WHERE hash = ? LIMIT 1');
  const lastOf = db.prepare(`SELECT ${cols} FROM audit WHERE event = ? ORDER BY seq DESC LIMIT 1`);
  lastOf.setReturnArrays(true);
  const countThrough = db.prepare('SELECT count(*) AS n FROM audit WHERE seq <= ?');
  return {
    rows: (afterSeq, throughSeq = Number.MAX_SAFE_INTEGER) => rows.iterate(afterSeq, throughSeq) as Iterable<ChainRow>,
    canonicalRows: (afterSeq, throughSeq = Number.MAX_SAFE_INTEGER) => canonical.iterate(afterSeq, throughSeq) as Iterable<CanonicalRow>,
    row: (seq) => one.get(seq) as ChainRow | undefined,
    storedHashAt: (seq) => (hashAt.get(seq) as { hash: string } | undefined)?.hash,
    seqOfHash: (hash) => (seqOf.get(hash) as { seq: number } | undefined)?.seq,
    sequenceMax: () => {
      try { return (db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").get() as { seq: number } | undefined)?.seq; } catch { return undefined; }
    },
    missingGuards: () => {
      const found = new Map((db.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'").all() as { name: string; sql: string }[])
        .map((t) => [t.name, normalize(t.sql)]));
      return Object.entries(AUDIT_TRIGGERS).filter(([name, sql]) => found.get(name) !== normalize(sql)).map(([name]) => name);
    },
    lastOf: (event) => lastOf.get(event) as ChainRow | undefined,
    countThrough: (seq) => (countThrough.get(seq) as { n: number }).n,
  };
}

function auditColumns(db: DatabaseSync): Set<string> {
  const have = new Set((db.prepare('PRAGMA table_info(audit)').all() as { name: string }[]).map((c) => c.name));
  if (!have.size) throw new BrokerError('not_found', 'the store has no audit table', { hint: 'is this a broker store file? (store.sqlite in the service config)' });
  return have;
}

/** The columns of a ChainRow, in its order. */
function chainColumns(have: Set<string>): string {
  return `seq, at, event, decision, developer, template, session_id, reason, access_key_id, role_session_name, expiration, detail,
    ${have.has('vault_accessor') ? 'vault_accessor' : 'NULL'}, prev_hash, hash, ${have.has('hash_version') ? 'hash_version' : '1'}`;
}

/** One page of the chain as stored (ChainRow order): what `GET /v1/admin/audit?view=chain` serves, a page at a time. */
export function chainPage(db: DatabaseSync): (afterSeq: number, limit: number) => ChainRow[] {
  const page = db.prepare(`SELECT ${chainColumns(auditColumns(db))} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?`);
  page.setReturnArrays(true);
  return (afterSeq, limit) => page.all(afterSeq, limit) as unknown as ChainRow[];
}

const normalize = (sql: string) => sql.replace(/\s+/g, ' ').replace(/ IF NOT EXISTS/i, '').replace(/;\s*$/, '').trim();

/**
 * A store file opened read-only, for `broker audit verify --db` on a live store (the service may
 * keep writing; one read transaction gives a consistent snapshot of it).
 */
export class SqliteAuditReader {
  readonly source: ChainSource;
  private constructor(private readonly db: DatabaseSync, readonly path: string) {
    this.source = sqliteChainSource(db);
  }

  static open(path: string): SqliteAuditReader {
    if (!existsSync(path)) throw new BrokerError('not_found', `no store file at ${path}`, { hint: 'give the service\'s store file (store.sqlite in its config) with --db' });
    let db: DatabaseSync;
    try {
      db = new DatabaseSync(path, { readOnly: true });
      db.exec('BEGIN');
    } catch (e) {
      throw new BrokerError('not_found', `cannot open the store at ${path}: ${(e as Error).message}`, { hint: 'give the service\'s store file (store.sqlite in its config) with --db' });
    }
    return new SqliteAuditReader(db, path);
  }

  /** The last seq in this snapshot (0 when empty). */
  lastSeq(): number {
    return (this.db.prepare('SELECT max(seq) AS m FROM audit').get() as { m: number | null }).m ?? 0;
  }

  hasCheckpoints(): boolean {
    return this.source.lastOf('audit.checkpoint') !== undefined;
  }

  close(): void {
    try { this.db.exec('COMMIT'); } catch { /* no transaction */ }
    this.db.close();
  }
}
