/**
 * Refresh-token families: rotation with reuse detection (RFC 9700 §4.14.2), the interface a backend
 * implements (SQLite: sqlite/refresh-token-families.ts).
 *
 * The model:
 * - A **family** starts at a login: one developer, the principal the IdP vouched for then (email,
 *   groups), one device key (its RFC 7638 thumbprint, the `jkt` every DPoP proof for the family's
 *   tokens must match, RFC 9449 §5 and §8), and an absolute end fixed at login that no rotation
 *   extends.
 * - Each refresh token has a `jti` (RFC 7519 §4.1.7) and belongs to one family. Using it rotates it:
 *   it is spent and one new token of the same family is recorded, in one transaction.
 * - A spent token presented again is **reuse**: someone holds a copy. The whole family is revoked at
 *   once (the attacker's and the developer's tokens alike, since the service cannot tell them apart),
 *   and the developer logs in again.
 * - Every start, rotation, reuse and revocation is audited in the same transaction as the change, as
 *   for the other repositories (fail closed: `audit_unavailable`).
 * - The store keeps `jti`s, never the tokens themselves.
 */
import type { AuditEvent } from './audit-event.js';

export interface RefreshTokenFamily {
  id: string;
  developer: string;
  /** The IdP-verified email at login, or ''. */
  email: string;
  /**
   * The developer's groups as the ID token of the login said: the groups of every access token the
   * family buys (a token's own claims are never copied forward), re-checked against templates at
   * every issue.
   */
  groups: string[];
  /** RFC 7638 thumbprint of the device key the family is bound to. */
  jkt: string;
  createdAt: number;
  /** The family's absolute end (no rotation extends it): the login's lifetime. */
  expiresAt: number;
  revokedAt: number | null;
  /** Why it was revoked: `reuse of a spent refresh token`, `logout`, an admin's reason … */
  revokeReason: string | null;
  /** Rotations so far: 0 after the login. Clients order copies of the login by it. */
  generation: number;
}

/** One refresh token of a family, by its `jti`: never the token itself. */
export interface RefreshTokenRecord {
  jti: string;
  familyId: string;
  /** The family's generation this token was issued at. */
  generation: number;
  issuedAt: number;
  /** When it was rotated (spent); null while it is the family's current token. */
  spentAt: number | null;
}

export interface NewRefreshToken {
  jti: string;
  issuedAt: number;
}

export type NewRefreshTokenFamily = Omit<RefreshTokenFamily, 'revokedAt' | 'revokeReason' | 'generation'>;

/** What presenting a refresh token's `jti` did. */
export type RotationOutcome =
  /** It was the family's current token: spent, and `next` recorded as the new current one (`family.generation` is its generation). */
  | { kind: 'rotated'; family: RefreshTokenFamily }
  /** It had been spent before: the family is now revoked (RFC 9700 §4.14.2). */
  | { kind: 'reuse-detected'; family: RefreshTokenFamily }
  /** Its family was revoked or has ended: nothing issued. */
  | { kind: 'family-ended'; family: RefreshTokenFamily }
  /** No such token in that family (never issued by this service, or pruned after its family ended). */
  | { kind: 'unknown' };

export interface RefreshTokenFamilies {
  /** Starts a family with its first token (a login), and appends `e`, atomically. */
  start(family: NewRefreshTokenFamily, first: NewRefreshToken, e: AuditEvent): Promise<void>;
  /**
   * Rotates `jti` (of family `familyId`) to `next` if it is the family's current token, atomically
   * with the audit record of the outcome: `rotated` when it was; `reuse` (the family's revocation)
   * when it had been spent; `ended` when the family was revoked or is past its end. The caller has
   * already checked the token's signature and its DPoP proof against the token's `cnf.jkt`.
   */
  rotate(familyId: string, jti: string, next: NewRefreshToken, audit: { rotated: AuditEvent; reuse: AuditEvent; ended: AuditEvent }): Promise<RotationOutcome>;
  /** Revokes a family (logout, an admin) and appends `e`, atomically; false if it was already revoked (nothing appended). */
  revoke(familyId: string, reason: string, e: AuditEvent): Promise<boolean>;
  /**
   * Revokes every live family of a developer (an admin offboarding a person) and appends `e` once
   * with the count and the families in its detail, atomically; how many were revoked (0: nothing
   * appended).
   */
  revokeDeveloper(developer: string, reason: string, e: AuditEvent): Promise<number>;
  get(familyId: string): Promise<RefreshTokenFamily | undefined>;
  /** Deletes families (and their tokens) that ended before `endedBefore`; how many. */
  prune(endedBefore: number): Promise<number>;
}

/** A family still buys tokens: not revoked and not past its end. */
export function familyIsLive(f: RefreshTokenFamily, now: number): boolean {
  return f.revokedAt === null && f.expiresAt > now;
}
