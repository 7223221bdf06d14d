import { existsSync, statSync } from 'node:fs';
import { DatabaseSync, type SQLInputValue } from 'node:sqlite';
import { BrokerError } from '../../errors.js';
import type { AuditRecord } from '../audit-event.js';
import type { AuditSearch, RecordFilter, SessionStartFilter } from '../audit-search.js';
import type { ChainRow, ChainSource } from '../audit-verify.js';
import { chainPage, sqliteChainSource } from './audit-chain-source.js';
import { toRecord } from './audit-log.js';

/** SQLite caps bound parameters per statement (SQLITE_MAX_VARIABLE_NUMBER, 32766 since 3.32); our lists stay far below. */
const MAX_LIST = 1000;

/**
 * AuditSearch on the `audit` table, with SELECTs only: it runs on the service's connection
 * (SqliteStore) and on a store file opened read-only (openAuditSearchReadOnly), the same queries.
 */
export class SqliteAuditSearch implements AuditSearch {
  constructor(private readonly db: DatabaseSync) {}

  async sessionStarts(f: SessionStartFilter, afterSeq: number, limit: number): Promise<AuditRecord[]> {
    const where = ["s.event = 'session.start'", "s.decision = 'allowed'", 's.seq > ?'];
    const args: SQLInputValue[] = [afterSeq];
    in_(where, args, 's.session_id', f.sessions);
    in_(where, args, 's.developer', f.developers);
    in_(where, args, 's.role_session_name', f.roleSessionNames);
    if (f.template !== undefined) { where.push('s.template = ?'); args.push(f.template); }
    if (f.agent !== undefined) {
      where.push(`(json_extract(s.detail, '$.agent') = ? OR s.session_id IN (SELECT session_id FROM audit WHERE event = 'session.update' AND json_extract(detail, '$.agent') = ?))`);
      args.push(f.agent, f.agent);
    }
    if (f.accessKeyIds !== undefined) {
      where.push(`s.session_id IN (SELECT session_id FROM audit WHERE access_key_id IN (${marks(f.accessKeyIds)}))`);
      args.push(...f.accessKeyIds);
    }
    if (f.vaultAccessor !== undefined) {
      where.push('s.session_id IN (SELECT session_id FROM audit WHERE vault_accessor = ?)');
      args.push(f.vaultAccessor);
    }
    if (f.startedFrom !== undefined) { where.push('s.at >= ?'); args.push(f.startedFrom); }
    if (f.startedUntil !== undefined) { where.push('s.at <= ?'); args.push(f.startedUntil); }
    return this.all(`SELECT * FROM audit s WHERE ${where.join(' AND ')} ORDER BY s.seq LIMIT ?`, [...args, limit]);
  }

  async ofSessions(ids: string[]): Promise<AuditRecord[]> {
    if (ids.length === 0) return [];
    const out: AuditRecord[] = [];
    for (let i = 0; i < ids.length; i += MAX_LIST) {
      const chunk = ids.slice(i, i + MAX_LIST);
      out.push(...this.all(`SELECT * FROM audit WHERE session_id IN (${marks(chunk)}) ORDER BY seq`, chunk));
    }
    return out.sort((a, b) => a.seq - b.seq);
  }

  async records(f: RecordFilter, afterSeq: number, limit: number, latest = false): Promise<AuditRecord[]> {
    const where = ['seq > ?'];
    const args: SQLInputValue[] = [afterSeq];
    in_(where, args, 'session_id', f.sessions);
    in_(where, args, 'developer', f.developers);
    in_(where, args, 'access_key_id', f.accessKeyIds);
    in_(where, args, 'role_session_name', f.roleSessionNames);
    if (f.template !== undefined) { where.push('template = ?'); args.push(f.template); }
    if (f.vaultAccessor !== undefined) { where.push('vault_accessor = ?'); args.push(f.vaultAccessor); }
    if (f.since !== undefined) { where.push('at >= ?'); args.push(f.since); }
    if (f.until !== undefined) { where.push('at <= ?'); args.push(f.until); }
    if (f.denied) where.push("decision = 'denied'");
    const sql = `SELECT * FROM audit WHERE ${where.join(' AND ')} ORDER BY seq ${latest ? 'DESC' : ''} LIMIT ?`;
    const rows = this.all(sql, [...args, limit]);
    return latest ? rows.reverse() : rows;
  }

  async chain(afterSeq: number, limit: number): Promise<ChainRow[]> {
    this.page ??= chainPage(this.db);
    return this.page(afterSeq, limit);
  }

  async chainStore(): Promise<{ sequenceMax: number | undefined; missingGuards: string[] }> {
    this.source ??= sqliteChainSource(this.db);
    return { sequenceMax: this.source.sequenceMax(), missingGuards: this.source.missingGuards() };
  }

  private page: ((afterSeq: number, limit: number) => ChainRow[]) | undefined;
  private source: ChainSource | undefined;

  private all(sql: string, args: SQLInputValue[]): AuditRecord[] {
    return (this.db.prepare(sql).all(...args) as Record<string, unknown>[]).map(toRecord);
  }
}

function marks(values: readonly unknown[]): string {
  return values.map(() => '?').join(',');
}

function in_(where: string[], args: SQLInputValue[], column: string, values: string[] | undefined): void {
  if (values === undefined) return;
  if (values.length === 0 || values.length > MAX_LIST) throw new TypeError(`${column}: 1 to ${MAX_LIST} values`);
  where.push(`${column} IN (${marks(values)})`);
  args.push(...values);
}

/**
 * A store file opened read-only, for `broker audit … --db FILE` on the service's host (incident
 * response): nothing is written, not even a migration, so it may be read while the service runs
 * (SQLite's WAL lets readers in beside the writer) or from a copy. Not audited: whoever reads the
 * file has the host.
 */
export function openAuditSearchReadOnly(path: string): { search: AuditSearch; close(): void } {
  if (!existsSync(path)) throw new BrokerError('not_found', `no store file at ${path}`, { hint: 'give the service\'s store.sqlite file (see its config)' });
  if (statSync(path).isDirectory()) throw new BrokerError('invalid_request', `${path} is a directory, not a store file`, { hint: 'give the service\'s store.sqlite file (see its config)' });
  let db: DatabaseSync;
  try {
    db = new DatabaseSync(path, { readOnly: true, timeout: 2000 });
    const audit = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'audit'").get();
    if (!audit) {
      db.close();
      throw new BrokerError('invalid_request', `${path} is not a broker store: it has no audit table`, { hint: 'give the service\'s store.sqlite file (see its config)' });
    }
  } catch (e) {
    if (e instanceof BrokerError) throw e;
    throw new BrokerError('invalid_request', `${path} cannot be read as a broker store: ${(e as Error).message}`, {
      cause: e, hint: 'give the service\'s store.sqlite file (see its config); a copy needs its -wal file beside it',
    });
  }
  return { search: new SqliteAuditSearch(db), close: () => db.close() };
}
