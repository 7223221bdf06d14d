/**
 * Revoked task sessions, per template role: what the role's deny document
 * (`broker-revoked-sessions`, broker/aws/role-revocations.ts) must contain, kept in the store so a
 * restart or a second service process sees them (and re-applies what IAM has not accepted yet).
 */
import type { AuditEvent } from './audit-event.js';

/** `session`: a `broker:session` tag value; `source-identity`: a developer's SourceIdentity (offboarding). */
export type RevocationKind = 'session' | 'source-identity';

export interface NewRevocation {
  roleArn: string;
  kind: RevocationKind;
  value: string;
  /** When every credential it targets has expired (the session's last issue + credential lifetime): prunable after. */
  until: number;
  revokedBy: string;
  reason: string;
}

export interface RevocationEntry extends NewRevocation {
  /** Store order: the writer marks applied what it had read. */
  seq: number;
  revokedAt: number;
  /** When IAM accepted a document denying it (null: not yet). */
  appliedAt: number | null;
  /** When the role-wide fallback came to cover it (its own condition value is no longer written). */
  coveredAt: number | null;
}

export type RevocationStatus = 'pending' | 'applied' | 'covered';

export function revocationStatus(e: Pick<RevocationEntry, 'appliedAt' | 'coveredAt'>): RevocationStatus {
  return e.coveredAt !== null ? 'covered' : e.appliedAt !== null ? 'applied' : 'pending';
}

/** The role-wide `aws:TokenIssueTime` deny written when the entries no longer fit. */
export interface RoleFallback {
  /** Credentials of the role issued before this instant are denied. */
  issuedBefore: number;
  /** Past this the entries it replaced have all expired: removed at the next prune. */
  until: number;
  recordedAt: number;
  /** How many entries it covered when written. */
  covered: number;
}

/** What the role's document should say, as of `version`. */
export interface RoleRevocationState {
  roleArn: string;
  /** Bumped by every change to what the document should say. */
  version: number;
  /** The version IAM last accepted (0: never). */
  appliedVersion: number;
  appliedAt: number | null;
  entries: RevocationEntry[];
  fallback: RoleFallback | null;
}

export interface RevocationRepository {
  /**
   * Records revocations and their audit records, atomically. An entry already recorded keeps its
   * row and takes the later `until`; either way the role's version is bumped.
   */
  add(entries: NewRevocation[], events: AuditEvent[]): Promise<void>;
  /** One role's entries (oldest first) and fallback; undefined when the store knows nothing of the role. */
  state(roleArn: string): Promise<RoleRevocationState | undefined>;
  /** Every role with revocations or a document to write or remove. */
  roles(): Promise<RoleRevocationState[]>;
  /** Roles whose document in IAM is behind the store (version > appliedVersion). */
  outdated(): Promise<string[]>;
  /**
   * IAM accepted the document of `version` (built from entries up to `maxSeq`): those entries are
   * marked applied at `appliedAt` and `events` appended, atomically. An older version never
   * overwrites a newer one's record.
   */
  markApplied(roleArn: string, version: number, maxSeq: number, appliedAt: number, events: AuditEvent[]): Promise<void>;
  /** Records the role-wide fallback, covering every entry up to `maxSeq` not yet covered; bumps the version. */
  setFallback(roleArn: string, f: Omit<RoleFallback, 'recordedAt' | 'covered'>, maxSeq: number, e: AuditEvent): Promise<void>;
  /** Removes entries and fallbacks whose `until` is at or before `now`; the roles changed (their version bumped). */
  prune(now: number): Promise<string[]>;
}
