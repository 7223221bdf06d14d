import { BrokerError } from '../../errors.js';
import type { Store } from '../store.js';
import { SqliteAuditLog } from './audit-log.js';
import { SqliteAuditSearch } from './audit-search.js';
import { SqliteDatabase, type AuditWriteObserver } from './database.js';
import { SqliteFreezes } from './freezes.js';
import { migrate } from './migrations.js';
import { SqliteRefreshTokenFamilies } from './refresh-token-families.js';
import { SqliteSeenIdTokens } from './seen-id-tokens.js';
import { SqliteRevocationRepository } from './session-revocations.js';
import { SqliteSessionRepository } from './sessions.js';
import { SqliteSinkCursors } from './sink-cursors.js';
import { SqliteStartRequests } from './start-requests.js';
import { SqliteTemplateVersions } from './template-versions.js';
import { SqliteVaultTokenRepository } from './vault-tokens.js';

/**
 * The store in one embedded SQLite file: its repositories share one connection and one
 * transaction helper, so "create a session + its audit record" and the like commit together or not
 * at all. One service process per file (SQLite's own locking makes a second one wait, not corrupt).
 */
export class SqliteStore implements Store {
  readonly auditLog: SqliteAuditLog;
  /** The audit log read by what an incident names (store/audit-search.ts). */
  readonly auditSearch: SqliteAuditSearch;
  readonly sessions: SqliteSessionRepository;
  readonly vaultTokens: SqliteVaultTokenRepository;
  readonly refreshTokenFamilies: SqliteRefreshTokenFamilies;
  readonly seenIdTokens: SqliteSeenIdTokens;
  readonly startRequests: SqliteStartRequests;
  readonly freezes: SqliteFreezes;
  readonly revocations: SqliteRevocationRepository;
  readonly templateVersions: SqliteTemplateVersions;
  readonly sinkCursors: SqliteSinkCursors;
  private readonly sql: SqliteDatabase;

  constructor(path: string, options: { busyTimeoutMs?: number; now?: () => number; onAuditWrite?: AuditWriteObserver } = {}) {
    try {
      this.sql = new SqliteDatabase(path, { busyTimeoutMs: options.busyTimeoutMs, now: options.now ?? Date.now, onAuditWrite: options.onAuditWrite });
      migrate(this.sql.db);
    } catch (e) {
      throw new BrokerError('audit_unavailable', `cannot open the store at ${path}: ${(e as Error).message}`, {
        cause: e,
        hint: 'check that the directory exists and is writable by the broker',
      });
    }
    this.auditLog = new SqliteAuditLog(this.sql);
    this.auditSearch = new SqliteAuditSearch(this.sql.db);
    this.sessions = new SqliteSessionRepository(this.sql, this.auditLog);
    this.vaultTokens = new SqliteVaultTokenRepository(this.sql, this.auditLog);
    this.refreshTokenFamilies = new SqliteRefreshTokenFamilies(this.sql, this.auditLog);
    this.seenIdTokens = new SqliteSeenIdTokens(this.sql);
    this.startRequests = new SqliteStartRequests(this.sql, this.auditLog);
    this.freezes = new SqliteFreezes(this.sql, this.auditLog);
    this.revocations = new SqliteRevocationRepository(this.sql, this.auditLog);
    this.templateVersions = new SqliteTemplateVersions(this.sql, this.auditLog);
    this.sinkCursors = new SqliteSinkCursors(this.sql);
  }

  async close(): Promise<void> {
    this.sql.close();
  }
}
