/**
 * Refresh-token families: the interface a backend implements for rotation with reuse detection
 * (RFC 9700 §4.14.2). NOT IMPLEMENTED YET — no backend implements it and nothing calls it: today the
 * service's refresh tokens are stateless signed JWTs bound to the device key (broker/identity/
 * broker-tokens.ts, `cnf.jkt`), not rotated, and no table holds them. This module fixes the shape the
 * implementation fills in, beside the other repositories (store.ts).
 *
 * The model:
 * - A **family** starts at a login: one developer, one device key (its RFC 7638 thumbprint, the
 *   `jkt` every DPoP proof for the family's tokens must match, RFC 9449 §5 and §8).
 * - Each refresh token has a `jti` (RFC 7519 §4.1.7) and belongs to one family. Using it rotates it:
 *   it is spent and one new token of the same family is issued, in one transaction.
 * - A spent token presented again is **reuse**: someone holds a copy. The whole family is revoked at
 *   once (the attacker's and the developer's tokens alike, since the service cannot tell them apart),
 *   and the developer logs in again.
 * - Every start, rotation, reuse and revocation is audited in the same transaction as the change, as
 *   for the other repositories (fail closed: `audit_unavailable`).
 */
import type { AuditEvent } from './audit-event.js';

export interface RefreshTokenFamily {
  id: string;
  developer: string;
  /** RFC 7638 thumbprint of the device key the family is bound to. */
  jkt: string;
  createdAt: number;
  /** The family's absolute end (no rotation extends it): the login's lifetime. */
  expiresAt: number;
  revokedAt: number | null;
  /** Why it was revoked: `reuse of a spent refresh token`, `logout`, an admin's reason … */
  revokeReason: string | null;
}

/** One refresh token of a family, by its `jti`: never the token itself. */
export interface RefreshTokenRecord {
  jti: string;
  familyId: string;
  issuedAt: number;
  expiresAt: number;
  /** When it was rotated (spent); null while it is the family's current token. */
  spentAt: number | null;
}

export type NewRefreshToken = Omit<RefreshTokenRecord, 'spentAt' | 'familyId'>;

/** What presenting a refresh token's `jti` did. */
export type RotationOutcome =
  /** It was the family's current token: spent, and `next` recorded as the new current one. */
  | { kind: 'rotated'; family: RefreshTokenFamily }
  /** It had been spent before: the family is now revoked (RFC 9700 §4.14.2). */
  | { kind: 'reuse-detected'; family: RefreshTokenFamily }
  /** Its family was revoked or has ended: nothing issued. */
  | { kind: 'family-ended'; family: RefreshTokenFamily }
  /** No such token (never issued by this service, or pruned after its family ended). */
  | { kind: 'unknown' };

export interface RefreshTokenFamilies {
  /** Starts a family with its first token (a login), and appends `e`, atomically. */
  start(family: Omit<RefreshTokenFamily, 'revokedAt' | 'revokeReason'>, first: NewRefreshToken, e: AuditEvent): Promise<void>;
  /**
   * Rotates `jti` to `next` if it is its family's current token, atomically with the audit record
   * of the outcome (`rotated`: e.g. `token.refresh issued`; `reuse-detected`: the family's
   * revocation). The caller has already checked the token's signature and its DPoP proof against
   * the family's `jkt`.
   */
  rotate(jti: string, next: NewRefreshToken, audit: { rotated: AuditEvent; reuse: AuditEvent }): Promise<RotationOutcome>;
  /** Revokes a family (logout, an admin); false if it was already revoked. */
  revoke(familyId: string, reason: string, e: AuditEvent): Promise<boolean>;
  /** Revokes every family of a developer (an admin stopping a person); how many were revoked. */
  revokeDeveloper(developer: string, reason: string, e: AuditEvent): Promise<number>;
  get(familyId: string): Promise<RefreshTokenFamily | undefined>;
}
