import { randomUUID } from 'node:crypto';
import { BrokerError } from '../errors.js';
import type { AuditEvent } from '../store/audit-event.js';
import { familyIsLive, type RefreshTokenFamilies, type RefreshTokenFamily } from '../store/refresh-token-families.js';
import type { AuditLog } from '../store/store.js';
import type { AccessClaims, BrokerTokens, RefreshClaims } from './broker-tokens.js';
import type { Principal } from './principal.js';

/**
 * The lifecycle of a broker login, server-side: a login bound to a device key starts a refresh-token
 * family (store/refresh-token-families.ts) with a fixed end; every refresh rotates its token, and a
 * spent one presented again revokes the family (RFC 9700 §4.14.2); logout and an admin revoke it;
 * an access token bought under a family is refused once the family is revoked or over. The groups of
 * a login are the family's, recorded at login, never read back from a token.
 */

/** The cause of a refusal that is already in the audit log, as a record of its own (the developer is known). */
export class DenialRecorded extends Error {
  override readonly name = 'DenialRecorded';
}

export interface IssuedLogin {
  principal: Principal;
  accessToken: string;
  accessTokenExpiresIn: number;
  /** Only when the login proved possession of a device key (DPoP). */
  refresh?: { token: string; familyId: string; generation: number; expiresAt: number };
}

export interface LoginsDeps {
  tokens: BrokerTokens;
  families: RefreshTokenFamilies;
  auditLog: AuditLog;
  /** A login's absolute lifetime (tokens.refreshTokenTtl), seconds. */
  refreshTtlSeconds: number;
  now?: () => number;
}

export class BrokerLogins {
  private readonly now: () => number;

  constructor(private readonly deps: LoginsDeps) {
    this.now = deps.now ?? Date.now;
  }

  /**
   * Tokens for a verified ID token. With a device key (`jkt`, from a DPoP proof) a family starts,
   * and its first refresh token is bound to the key; without one, only a short access token.
   */
  async login(p: Principal, jkt?: string): Promise<IssuedLogin> {
    const accessTokenExpiresIn = this.deps.tokens.accessTokenTtl;
    if (!jkt) {
      await this.deps.auditLog.append({ event: 'login', decision: 'allowed', developer: p.id, detail: { groups: p.groups, keyBound: false } });
      return { principal: p, accessToken: await this.deps.tokens.accessToken(p), accessTokenExpiresIn };
    }
    const now = this.now();
    const family = { id: randomUUID(), developer: p.id, email: p.email, groups: p.groups, jkt, createdAt: now, expiresAt: now + this.deps.refreshTtlSeconds * 1000 };
    const jti = randomUUID();
    await this.deps.families.start(family, { jti, issuedAt: now }, {
      event: 'login', decision: 'allowed', developer: p.id,
      detail: { groups: p.groups, keyBound: true, family: family.id, expiresAt: new Date(family.expiresAt).toISOString() },
    });
    return {
      principal: p,
      accessToken: await this.deps.tokens.accessToken(p, family.id),
      accessTokenExpiresIn,
      refresh: { token: await this.deps.tokens.refreshToken(family, jti), familyId: family.id, generation: 0, expiresAt: family.expiresAt },
    };
  }

  /** Signature, typ and expiry of a refresh token: checked before any DPoP proof is looked at. */
  verifyRefreshToken(token: string): Promise<RefreshClaims> {
    return this.deps.tokens.verifyRefresh(token);
  }

  /**
   * Rotates the refresh token (`claims`, verified) presented with a proof by key `proofJkt`: a new
   * refresh token of the same family, and an access token for the family's principal.
   */
  async refresh(claims: RefreshClaims, proofJkt: string): Promise<IssuedLogin & { refresh: NonNullable<IssuedLogin['refresh']> }> {
    boundTo(claims, proofJkt);
    const detail = { family: claims.familyId };
    const next = { jti: randomUUID(), issuedAt: this.now() };
    const outcome = await this.deps.families.rotate(claims.familyId, claims.jti, next, {
      rotated: { event: 'token.refresh', decision: 'allowed', developer: claims.developer, detail },
      reuse: { event: 'login.revoke', decision: 'revoked', developer: claims.developer, reason: 'reuse of a spent refresh token', detail: { ...detail, reuseDetected: true } },
      ended: { event: 'token.refresh', decision: 'denied', developer: claims.developer, reason: 'its login has ended', detail },
    });
    switch (outcome.kind) {
      case 'rotated': {
        const f = outcome.family;
        const principal = principalOf(f);
        return {
          principal,
          accessToken: await this.deps.tokens.accessToken(principal, f.id),
          accessTokenExpiresIn: this.deps.tokens.accessTokenTtl,
          refresh: { token: await this.deps.tokens.refreshToken(f, next.jti), familyId: f.id, generation: f.generation, expiresAt: f.expiresAt },
        };
      }
      case 'reuse-detected':
        throw new BrokerError('unauthenticated', 'this refresh token was already used, so its login is now revoked', {
          cause: new DenialRecorded('reuse of a spent refresh token'),
          hint: 'a copy of your login may be in use elsewhere; log in again: broker login',
        });
      case 'family-ended':
        throw ended(outcome.family);
      case 'unknown':
        throw new BrokerError('unauthenticated', 'refresh token invalid or expired', { cause: new Error('refresh token unknown to the store'), hint: 'run: broker login' });
    }
  }

  /**
   * Revokes the family of a refresh token (any of its tokens, spent ones too: whoever holds one of
   * them and the device key may end the login), presented with a proof by its key (RFC 7009-like).
   */
  async logout(claims: RefreshClaims, proofJkt: string): Promise<{ revoked: boolean; expiresAt: number }> {
    boundTo(claims, proofJkt);
    const family = await this.deps.families.get(claims.familyId);
    if (!family || family.developer !== claims.developer) {
      throw new BrokerError('unauthenticated', 'refresh token invalid or expired', { cause: new Error('refresh token unknown to the store'), hint: 'run: broker login' });
    }
    const revoked = await this.deps.families.revoke(family.id, 'logout', {
      event: 'login.revoke', decision: 'revoked', developer: family.developer, reason: 'logout', detail: { family: family.id },
    });
    return { revoked, expiresAt: family.expiresAt };
  }

  /** The principal of an access token, if the login it was bought under is still live. */
  async principalOf(claims: AccessClaims): Promise<Principal> {
    if (claims.familyId === undefined) return claims.principal;
    const f = await this.deps.families.get(claims.familyId);
    if (!f || !familyIsLive(f, this.now())) {
      throw new BrokerError('unauthenticated', 'access token invalid or expired', {
        cause: new Error(f ? 'its login has ended' : 'its login is unknown'), hint: 'run: broker login',
      });
    }
    return claims.principal;
  }

  /**
   * Offboarding: revokes every login of a developer at once (their refresh tokens buy nothing more,
   * their access tokens are refused from the next request). For an admin command; how many.
   */
  revokeDeveloper(developer: string, reason: string, by?: string): Promise<number> {
    const e: AuditEvent = { event: 'login.revoke', decision: 'revoked', developer, reason, ...(by ? { detail: { by } } : {}) };
    return this.deps.families.revokeDeveloper(developer, reason, e);
  }
}

/** RFC 9449 §5: the proof's key must be the one the token is bound to (`cnf.jkt`). */
function boundTo(claims: RefreshClaims, proofJkt: string): void {
  if (claims.jkt !== proofJkt) {
    throw new BrokerError('unauthenticated', 'refresh token invalid or expired', {
      cause: new Error('DPoP key does not match the refresh token'), hint: 'run: broker login',
    });
  }
}

function principalOf(f: RefreshTokenFamily): Principal {
  return { id: f.developer, email: f.email, groups: f.groups };
}

function ended(f: RefreshTokenFamily): BrokerError {
  const why = f.revokedAt !== null ? `was revoked (${f.revokeReason ?? 'revoked'})` : `ended at ${new Date(f.expiresAt).toISOString()}`;
  return new BrokerError('unauthenticated', `this login ${why}`, { cause: new DenialRecorded('its login has ended'), hint: 'log in again: broker login' });
}
