/**
 * What the service keeps, as interfaces a storage backend implements: the task sessions, the Vault
 * tokens issued under them (by accessor), the sessions revoked per role (session-revocations.ts), the logins (refresh-token families,
 * refresh-token-families.ts), the ID tokens already exchanged (seen-id-tokens.ts), and the audit log
 * every decision is recorded in. The
 * domain (broker/sessions/) and the HTTP transport (broker/server/) depend on these only; the
 * service's start-up picks the backend (SQLite today: broker/store/sqlite/).
 *
 * Contract for every backend:
 * - A write that records a decision commits the decision and its audit record together, or neither,
 *   and rejects with `audit_unavailable` (BrokerError) when it cannot commit: callers then issue
 *   nothing (fail closed).
 * - The audit log is append-only and hash-chained by audit-chain.ts, so a log verifies the same
 *   whichever backend wrote it.
 * - Conditional writes (`end`, `setAgent`, `mark…`) change a row only if it is still in the state
 *   they expect and say whether they did: of two service replicas racing, one wins, and only its
 *   audit record is written.
 * - Times are milliseconds since the epoch, read from the backend's `now` (the service's clock).
 */
import type { AuditEvent, AuditRecord } from './audit-event.js';
import type { FreezeRepository } from './freezes.js';
import type { RefreshTokenFamilies } from './refresh-token-families.js';
import type { SeenIdTokens } from './seen-id-tokens.js';
import type { RevocationRepository } from './session-revocations.js';
import type { StartRequestRepository } from './start-requests.js';
import type { TemplateVersionRepository } from './template-versions.js';

export interface TaskSession {
  id: string;
  developer: string;
  template: string;
  params: Record<string, string>;
  reason: string;
  agent: string;
  roleSessionName: string;
  createdAt: number;
  expiresAt: number;
  endedAt: number | null;
  endReason: string | null;
  /** The administrator who ended it (broker admin end/offboard/freeze --revoke); null otherwise. */
  endedBy: string | null;
  /** The version of its template it started under (store/template-versions.ts); null for sessions started before versions were recorded. */
  templateVersion: string | null;
}

/** A session as it is created: not ended yet. */
export type NewTaskSession = Omit<TaskSession, 'endedAt' | 'endReason' | 'endedBy' | 'templateVersion'> & { templateVersion?: string | null | undefined };

/** Which sessions an admin lists (`broker admin sessions`); every field narrows. */
export interface SessionFilter {
  developer?: string | undefined;
  template?: string | undefined;
  agent?: string | undefined;
  /** Open and not past their end. */
  activeOnly?: boolean | undefined;
  /** Created at or after (ms), or still open. */
  since?: number | undefined;
  limit?: number | undefined;
}

/**
 * What a template's limits count (templates/schema.ts, limits), read in the transaction that
 * records a start, so two service processes sharing the store cannot both take the last place.
 */
export interface TemplateUsage {
  /** Open sessions of the template, not past their end, all developers. */
  open: number;
  /** Starts of the template at or after `since` (ended ones too), all developers, and the oldest of them. */
  starts: number;
  oldestStart: number | null;
  /** The same for the developer who starts now. */
  developerStarts: number;
  oldestDeveloperStart: number | null;
}

/** A Vault token issued under a task session: its accessor, never the token. */
export interface VaultTokenRecord {
  accessor: string;
  sessionId: string;
  createdAt: number;
  /** When Vault lets it die at the latest, unless renewed (issue time + its explicit max TTL). */
  expiresAt: number;
  revokedAt: number | null;
  /** Failed revocation attempts so far (Vault unreachable, …); retried by the sweeper. */
  revokeAttempts: number;
  lastError: string | null;
  /** When the last revocation attempt failed: the sweeper retries the least recently tried first. */
  lastAttemptAt: number | null;
  /**
   * The latest Vault can keep the token alive, renewals included (null: not known, rows written
   * before it was recorded). Past it a revocation that keeps failing is given up: the token is dead.
   */
  deadBy: number | null;
  /** When the broker stopped retrying a failed revocation because the token was past `deadBy`. */
  lapsedAt: number | null;
}

/** A Vault token as it is recorded at issue. */
export type NewVaultTokenRecord = Pick<VaultTokenRecord, 'accessor' | 'sessionId' | 'createdAt' | 'expiresAt' | 'deadBy'>;

/** The append-only, hash-chained record of every decision. */
export interface AuditLog {
  /** Appends one record, committed before the promise resolves. */
  append(e: AuditEvent): Promise<void>;
  /** Records after `afterSeq`, oldest first. */
  records(afterSeq?: number, limit?: number): Promise<AuditRecord[]>;
  /** Recomputes the hash chain: the seq of the first record that does not verify, or null when intact. */
  verify(): Promise<number | null>;
  /** The records of one task session, oldest first (its history, for `broker admin session`). */
  ofSession(sessionId: string, limit?: number): Promise<AuditRecord[]>;
  /**
   * Calls `listener` soon after records are appended (once per burst, after the appending
   * transaction has finished), so the audit sinks wake without polling; returns the unsubscribe.
   */
  onAppend(listener: () => void): () => void;
}

export interface SessionRepository {
  /**
   * Creates a session and appends its audit record, atomically. With `check`, first reads the
   * template's usage (starts since `check.since`) in the same transaction and gives it to
   * `check.refuse`, which throws to refuse the start: then nothing is written.
   */
  create(s: NewTaskSession, e: AuditEvent, check?: { since: number; refuse: (usage: TemplateUsage) => void }): Promise<void>;
  get(id: string): Promise<TaskSession | undefined>;
  /** Open sessions not past their end, oldest first; of one developer, or of everyone. */
  active(developer?: string): Promise<TaskSession[]>;
  /** How many sessions are open and not past their end (a count, no rows: read at every metrics scrape). */
  countActive(): Promise<number>;
  /**
   * Ends a session (if still open) and appends `e`, atomically; false if it had already ended.
   * `by`: the administrator who ended it, when one did.
   */
  end(id: string, reason: string, e: AuditEvent, by?: string): Promise<boolean>;
  /** Sessions matching `filter`, newest first (ended ones too unless `activeOnly`). */
  search(filter: SessionFilter): Promise<TaskSession[]>;
  /** Changes the agent of an open session and appends `e`, atomically; false if it had ended. */
  setAgent(id: string, agent: string, e: AuditEvent): Promise<boolean>;
  /** Sessions past their end that nobody ended yet (the sweeper ends them as `expired`). */
  expiredOpen(): Promise<TaskSession[]>;
  /**
   * Open sessions created at or before `createdBefore` whose start never completed: no
   * `credentials.issue issued` record, and for a start that grants no AWS credentials no
   * `vault.issue issued` one (the AWS grant is issued last, task-session-service.ts).
   */
  incompleteStarts(createdBefore: number, limit?: number): Promise<TaskSession[]>;
}

export interface VaultTokenRepository {
  /**
   * Records a token's accessor with its audit record, atomically, and says whether its session was
   * still open in that same transaction. If so, `issued` is appended; if the session ended (or
   * expired) while the token was being created, `ended` is appended instead, and the row is kept
   * unrevoked under the ended session, so the sweeper revokes it if the caller cannot.
   */
  record(t: NewVaultTokenRecord, issued: AuditEvent, ended: AuditEvent): Promise<boolean>;
  /** The session's tokens, oldest first. */
  ofSession(sessionId: string, options?: { unrevokedOnly?: boolean }): Promise<VaultTokenRecord[]>;
  /** Unrevoked tokens of sessions that have ended or expired: what the sweeper revokes, least recently tried first. */
  toRevoke(limit?: number): Promise<VaultTokenRecord[]>;
  /**
   * Tokens still to revoke whose revocation has failed before and that are dead anyway: `deadBy`
   * (or, unknown, `createdAt + fallbackMs`) is at or before `cutoff`.
   */
  pastDeadBy(cutoff: number, fallbackMs: number, limit?: number): Promise<VaultTokenRecord[]>;
  /** Stops retrying a token's revocation (it is past the latest it can live) and appends `e`; false if already settled. */
  markLapsed(accessor: string, e: AuditEvent): Promise<boolean>;
  /** Marks a token revoked and appends `e`; false if it already was. */
  markRevoked(accessor: string, e: AuditEvent): Promise<boolean>;
  /** A failed revocation: counted, its error kept (no secret in it), `e` appended when given. */
  recordRevokeFailure(accessor: string, error: string, e?: AuditEvent): Promise<void>;
}

/** One backend's repositories, sharing its transactions. */
export interface Store {
  readonly auditLog: AuditLog;
  readonly sessions: SessionRepository;
  readonly vaultTokens: VaultTokenRepository;
  readonly refreshTokenFamilies: RefreshTokenFamilies;
  readonly seenIdTokens: SeenIdTokens;
  readonly startRequests: StartRequestRepository;
  readonly freezes: FreezeRepository;
  /** Revoked sessions per template role (session-revocations.ts). */
  readonly revocations: RevocationRepository;
  readonly templateVersions: TemplateVersionRepository;
  close(): Promise<void>;
}
