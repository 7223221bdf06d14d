import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import { BrokerError } from '../errors.js';
import type { Principal } from './principal.js';

export interface IdTokenVerifierOptions {
  issuer: string;
  audience: string | string[];
  /** Allowlist; the token's own `alg` header never chooses (RFC 8725 §3.1). */
  algorithms: string[];
  groupsClaim: string;
  identityClaim: string;
  clockToleranceSeconds: number;
  fetchTimeoutMs?: number;
}

/** A genuine token whose claims the broker cannot accept (no identity, an unverified email). */
export class UnacceptableClaims extends Error {
  override readonly name = 'UnacceptableClaims';
}

/** Why a token was refused, for the audit log and server log only: clients get a fixed message. */
export function idTokenFailureReason(e: unknown): string {
  if (e instanceof UnacceptableClaims) return e.message;
  if (e instanceof joseErrors.JWTExpired) return 'expired';
  if (e instanceof joseErrors.JWTClaimValidationFailed) return `claim ${e.claim} invalid`;
  if (e instanceof joseErrors.JOSEAlgNotAllowed) return 'algorithm not allowed';
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return 'signature invalid';
  if (e instanceof joseErrors.JWKSNoMatchingKey) return 'no matching key';
  if (e instanceof joseErrors.JWSInvalid || e instanceof joseErrors.JWTInvalid) return 'malformed';
  if (e instanceof BrokerError) return e.message;
  return 'invalid';
}

/**
 * Verifies the IdP's ID tokens (OpenID Connect Core 1.0 §3.1.3.7) against the issuer's discovery
 * document and JWKS. The discovery document is fetched once, lazily, and must name exactly the
 * configured issuer (OIDC Discovery §4.3), so a look-alike IdP cannot slip in its own keys.
 */
export class IdTokenVerifier {
  private jwks: ReturnType<typeof createRemoteJWKSet> | undefined;

  constructor(private readonly opts: IdTokenVerifierOptions) {}

  private async keySet(): Promise<ReturnType<typeof createRemoteJWKSet>> {
    if (this.jwks) return this.jwks;
    const url = `${this.opts.issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
    let doc: { issuer?: unknown; jwks_uri?: unknown };
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(this.opts.fetchTimeoutMs ?? 5000) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      doc = (await res.json()) as typeof doc;
    } catch (e) {
      throw new BrokerError('upstream_unavailable', `cannot read the IdP's discovery document at ${url}: ${(e as Error).message}`, { cause: e });
    }
    if (doc.issuer !== this.opts.issuer || typeof doc.jwks_uri !== 'string') {
      throw new BrokerError('upstream_error', `the IdP's discovery document names issuer ${String(doc.issuer)}, not the configured ${this.opts.issuer}`, {
        hint: 'oidc.issuer must match the IdP exactly (scheme, host, path, trailing slash)',
      });
    }
    this.jwks = createRemoteJWKSet(new URL(doc.jwks_uri), { timeoutDuration: this.opts.fetchTimeoutMs ?? 5000 });
    return this.jwks;
  }

  async verify(idToken: string): Promise<Principal> {
    const jwks = await this.keySet();
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(idToken, jwks, {
        issuer: this.opts.issuer,
        audience: this.opts.audience,
        algorithms: this.opts.algorithms,
        clockTolerance: this.opts.clockToleranceSeconds,
        requiredClaims: ['sub', 'exp', 'iat'],
      }));
    } catch (e) {
      if (e instanceof joseErrors.JWKSTimeout) {
        throw new BrokerError('upstream_unavailable', 'the IdP key set could not be fetched', { cause: e });
      }
      throw new BrokerError('unauthenticated', 'ID token rejected', { cause: e });
    }
    const id = payload[this.opts.identityClaim];
    if (typeof id !== 'string' || id.length === 0) {
      throw new BrokerError('unauthenticated', 'ID token rejected', { cause: new UnacceptableClaims(`claim ${this.opts.identityClaim} missing`) });
    }
    // An email is an identity only if the IdP vouches for it: OIDC Core §5.1 says a relying party
    // must not rely on `email` as a unique identifier, and `email_verified` is true only when the IdP
    // took steps to ensure the End-User controls the address. Anything but `true` (false, absent,
    // the string "true") is unverified.
    const emailVerified = typeof payload.email === 'string' && payload.email.length > 0 && payload.email_verified === true;
    if (this.opts.identityClaim === 'email' && !emailVerified) {
      // The token is genuine (signature and claims checked above), so saying why helps its holder and
      // tells an attacker nothing.
      throw new BrokerError('unauthenticated', 'ID token rejected', {
        cause: new UnacceptableClaims('email not verified'),
        hint: 'the identity provider does not say your email address is verified (email_verified is not true); verify it at the IdP, then log in again',
      });
    }
    const rawGroups = payload[this.opts.groupsClaim];
    const groups = Array.isArray(rawGroups) ? rawGroups.filter((g): g is string => typeof g === 'string') : [];
    // Only a verified email can match a template's allowed.emails (access.ts ignores an empty one).
    return { id, email: emailVerified ? payload.email as string : '', groups };
  }
}
