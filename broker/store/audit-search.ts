/**
 * Reading the audit log by what an incident names (an AccessKeyId, a role session name, a Vault
 * accessor, a developer, a template, a time window), for `broker audit show|tail|cloudtrail` and
 * `GET /v1/admin/audit` (broker/audit/principal-chain.ts builds the answers). Read-only: a backend
 * implements it on its audit table, and the SQLite one also on a store file opened read-only
 * (sqlite/audit-search.ts), so an incident responder on the host reads exactly what the service would.
 */
import type { AuditRecord } from './audit-event.js';
import type { ChainRow } from './audit-verify.js';

/**
 * Which task sessions: each field narrows (AND); a list matches any of its values (OR). Times are
 * RFC 3339 UTC strings, compared as the records' own `at`.
 */
export interface SessionStartFilter {
  sessions?: string[] | undefined;
  developers?: string[] | undefined;
  template?: string | undefined;
  /** The agent at the start, or any agent the session was later switched to. */
  agent?: string | undefined;
  /** Sessions that were issued any of these AccessKeyIds. */
  accessKeyIds?: string[] | undefined;
  roleSessionNames?: string[] | undefined;
  /** Sessions that were issued this Vault token (by accessor). */
  vaultAccessor?: string | undefined;
  /** Started at or after. */
  startedFrom?: string | undefined;
  /** Started at or before. */
  startedUntil?: string | undefined;
}

/** Which records: every field narrows (AND); a list matches any of its values. */
export interface RecordFilter {
  sessions?: string[] | undefined;
  developers?: string[] | undefined;
  template?: string | undefined;
  accessKeyIds?: string[] | undefined;
  roleSessionNames?: string[] | undefined;
  vaultAccessor?: string | undefined;
  since?: string | undefined;
  until?: string | undefined;
  /** Only refusals (`decision: denied`). */
  denied?: boolean | undefined;
}

export interface AuditSearch {
  /** The `session.start allowed` records of the sessions matching, after `afterSeq`, oldest first. */
  sessionStarts(filter: SessionStartFilter, afterSeq: number, limit: number): Promise<AuditRecord[]>;
  /** Every record of these sessions, oldest first. */
  ofSessions(ids: string[]): Promise<AuditRecord[]>;
  /**
   * Records matching, oldest first: after `afterSeq`, or with `latest` the last `limit` of them
   * (still oldest first).
   */
  records(filter: RecordFilter, afterSeq: number, limit: number, latest?: boolean): Promise<AuditRecord[]>;
  /** Every record after `afterSeq` exactly as stored (at most `limit`), for a verifier elsewhere (`broker audit verify --server`). */
  chain(afterSeq: number, limit: number): Promise<ChainRow[]>;
  /** The store's own evidence, as it reports it: its highest seq handed out, its append-only guards missing or changed. */
  chainStore(): Promise<{ sequenceMax: number | undefined; missingGuards: string[] }>;
}
