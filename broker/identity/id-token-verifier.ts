import { createHash } from 'node:crypto';
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTHeaderParameters, type JWTPayload } from 'jose';
import { BrokerError } from '../errors.js';
import type { SeenIdTokens } from '../store/seen-id-tokens.js';
import type { Principal } from './principal.js';

export interface IdTokenVerifierOptions {
  issuer: string;
  audience: string | string[];
  /** Allowlist; the token's own `alg` header never chooses (RFC 8725 §3.1). */
  algorithms: string[];
  groupsClaim: string;
  identityClaim: string;
  clockToleranceSeconds: number;
  /** The client the ID tokens are for (the CLI's): `azp` must name it when present or when `aud` has several values. */
  authorizedParty: string;
  /** The oldest an ID token may be, by its `iat` (seconds), however long it stays unexpired. */
  maxAgeSeconds: number;
  /** Where accepted tokens are remembered until they expire, so each is accepted once. */
  seen: SeenIdTokens;
  fetchTimeoutMs?: number;
  now?: () => number;
}

/** A `jti` longer than this is not used as the key (the token's digest is). */
const MAX_JTI_CHARS = 256;

/** A genuine token whose claims the broker cannot accept (no identity, an unverified email). */
export class UnacceptableClaims extends Error {
  override readonly name = 'UnacceptableClaims';
}

/** Why a token was refused, for the audit log and server log only: clients get a fixed message. */
export function idTokenFailureReason(e: unknown): string {
  if (e instanceof UnacceptableClaims) return e.message;
  // jose reports maxTokenAge as JWTExpired on the `iat` claim.
  if (e instanceof joseErrors.JWTExpired) return e.claim === 'iat' ? 'too old (iat)' : 'expired';
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
  private readonly now: () => number;

  constructor(private readonly opts: IdTokenVerifierOptions) {
    this.now = opts.now ?? Date.now;
  }

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

  /**
   * Checks an ID token, short of its single use: the caller checks what else the request carries
   * (a DPoP proof), then spends it with `accept`, so a request refused for its proof does not use
   * up a genuine token.
   */
  async verify(idToken: string): Promise<VerifiedIdToken> {
    const jwks = await this.keySet();
    let payload: JWTPayload;
    let header: JWTHeaderParameters;
    try {
      ({ payload, protectedHeader: header } = await jwtVerify(idToken, jwks, {
        issuer: this.opts.issuer,
        audience: this.opts.audience,
        algorithms: this.opts.algorithms,
        clockTolerance: this.opts.clockToleranceSeconds,
        requiredClaims: ['sub', 'exp', 'iat'],
        // A token issued long ago but still unexpired (IdPs issue ID tokens for up to a day) is one
        // someone kept: an ID token is for logging in now (OIDC Core §3.1.3.7 point 10 lets the
        // client bound `iat`).
        maxTokenAge: this.opts.maxAgeSeconds,
        currentDate: new Date(this.now()),
      }));
    } catch (e) {
      if (e instanceof joseErrors.JWKSTimeout) {
        throw new BrokerError('upstream_unavailable', 'the IdP key set could not be fetched', { cause: e });
      }
      throw rejected(e);
    }
    // An access token of the same IdP, for the same audience and signed with the same key, is not an
    // ID token: RFC 9068 §4 has the resource server check `typ` is at+jwt, so the reverse holds here
    // (RFC 8725 §3.11, explicit typing).
    if (typeof header.typ === 'string' && header.typ.toLowerCase().replace(/^application\//, '') === 'at+jwt') {
      throw rejected(new UnacceptableClaims('typ at+jwt (an access token)'));
    }
    // OIDC Core §3.1.3.7 points 4-5: with several audiences `azp` must be there, and when it is there
    // it must name the client the token was issued to (the CLI's): a token another client obtained
    // for itself, listing us among its audiences, does not log anyone in here.
    const several = Array.isArray(payload.aud) && new Set(payload.aud).size > 1;
    if (payload.azp !== undefined && payload.azp !== this.opts.authorizedParty) throw rejected(new UnacceptableClaims('claim azp invalid'));
    if (several && payload.azp === undefined) throw rejected(new UnacceptableClaims('claim azp missing (several audiences)'));
    const id = payload[this.opts.identityClaim];
    if (typeof id !== 'string' || id.length === 0) {
      throw rejected(new UnacceptableClaims(`claim ${this.opts.identityClaim} missing`));
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
    return {
      // Only a verified email can match a template's allowed.emails (access.ts ignores an empty one).
      principal: { id, email: emailVerified ? payload.email as string : '', groups },
      // When the person last authenticated at the IdP (OIDC Core §2): what a confirmation's
      // freshness rests on (broker/requests/). Absent, or not a number: unknown.
      authTime: typeof payload.auth_time === 'number' && Number.isFinite(payload.auth_time) ? payload.auth_time * 1000 : undefined,
      once: { key: onceKey(payload, idToken), until: ((payload.exp as number) + this.opts.clockToleranceSeconds) * 1000 },
    };
  }

  /**
   * Spends a verified ID token: each logs in once, remembered in the store until it expires (after
   * that its `exp` refuses it anyway). Refused if it was spent before.
   */
  async accept(v: VerifiedIdToken): Promise<Principal> {
    if (!(await this.opts.seen.remember(v.once.key, v.once.until))) {
      throw new BrokerError('unauthenticated', 'ID token rejected', {
        cause: new UnacceptableClaims('already used'),
        hint: 'each ID token logs in once; get a new one from the identity provider (broker login)',
      });
    }
    return v.principal;
  }
}

/** An ID token that passed every check but its single use (`IdTokenVerifier.accept`). */
export interface VerifiedIdToken {
  principal: Principal;
  /** `auth_time` in ms, when the token carries it. */
  authTime?: number | undefined;
  once: { key: string; until: number };
}

function rejected(cause: unknown): BrokerError {
  return new BrokerError('unauthenticated', 'ID token rejected', { cause });
}

/**
 * What identifies one ID token: its issuer and `jti` (RFC 7519 §4.1.7, unique per issuer), or, when
 * the IdP sends none (oidc-provider, for one, does not), the token itself; as a SHA-256 digest either
 * way, so the store holds nothing a token could be rebuilt from.
 */
function onceKey(payload: JWTPayload, token: string): string {
  const jti = typeof payload.jti === 'string' && payload.jti.length > 0 && payload.jti.length <= MAX_JTI_CHARS ? payload.jti : undefined;
  const material = jti ? `jti\n${String(payload.iss)}\n${jti}` : `token\n${token}`;
  return createHash('sha256').update(material).digest('hex');
}
