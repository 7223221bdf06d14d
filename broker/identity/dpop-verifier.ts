import { calculateJwkThumbprint, EmbeddedJWK, jwtVerify, type JWK } from 'jose';
import { BrokerError } from '../errors.js';

/**
 * Verifies DPoP proofs (RFC 9449, OAuth 2.0 Demonstrating Proof of Possession) on the token
 * endpoints, so a refresh token is bound to the key that the developer's machine keeps in its OS
 * keychain: the token copied to another machine is useless without that key.
 */

/** Asymmetric algorithms only (RFC 9449 §4.3 check 4); the proof's own header never picks outside this list. */
export const DPOP_ALGORITHMS = ['ES256', 'ES384', 'EdDSA', 'RS256', 'PS256'];
/** How old a proof may be (RFC 9449 §11.1 leaves the window to the server; minutes, not hours). */
const MAX_PROOF_AGE_SECONDS = 120;
const MAX_PROOF_CHARS = 4096;

export interface DpopVerifierOptions {
  clockToleranceSeconds: number;
  now?: () => number;
}

/**
 * Checks of RFC 9449 §4.3: one well-formed JWS whose `typ` is `dpop+jwt`, an allowed asymmetric
 * `alg`, a signature by the *public* key in its `jwk` header, `htm` and `htu` equal to this request,
 * a recent `iat`, and a `jti` not seen before (§11.1 replay). Returns the key's RFC 7638 thumbprint
 * (`jkt`), which is what tokens are bound to (`cnf.jkt`, §6.1).
 */
export class DpopVerifier {
  /** jti → the time (ms) after which it can be forgotten: older proofs are refused by age anyway. */
  private readonly seen = new Map<string, number>();
  private readonly now: () => number;

  constructor(private readonly opts: DpopVerifierOptions) {
    this.now = opts.now ?? Date.now;
  }

  async verify(proof: string | undefined, request: { method: string; url: string }): Promise<string> {
    // Fixed messages: a client that gets a proof wrong learns which rule, never anything secret.
    if (!proof) throw invalid('a DPoP proof is required (DPoP header)');
    if (proof.length > MAX_PROOF_CHARS || proof.includes(',')) throw invalid('the DPoP header must hold exactly one proof');
    let payload;
    let jwk: JWK | undefined;
    try {
      ({ payload, protectedHeader: { jwk } } = await jwtVerify(proof, EmbeddedJWK, {
        typ: 'dpop+jwt',
        algorithms: DPOP_ALGORITHMS,
        maxTokenAge: MAX_PROOF_AGE_SECONDS,
        clockTolerance: this.opts.clockToleranceSeconds,
        requiredClaims: ['jti', 'htm', 'htu', 'iat'],
        currentDate: new Date(this.now()),
      }));
    } catch (e) {
      throw invalid('the DPoP proof is invalid', e);
    }
    if (payload.htm !== request.method) throw invalid('the DPoP proof was made for another HTTP method');
    if (typeof payload.htu !== 'string' || !sameTarget(payload.htu, request.url)) throw invalid('the DPoP proof was made for another URL');
    // A proof from the future is as suspect as an old one.
    if ((payload.iat ?? 0) * 1000 > this.now() + this.opts.clockToleranceSeconds * 1000) throw invalid('the DPoP proof is dated in the future');
    const jti = String(payload.jti);
    if (jti.length > 256) throw invalid('the DPoP proof is invalid');
    this.prune();
    if (this.seen.has(jti)) throw invalid('the DPoP proof was already used');
    this.seen.set(jti, this.now() + (MAX_PROOF_AGE_SECONDS + this.opts.clockToleranceSeconds) * 1000);
    return calculateJwkThumbprint(jwk!, 'sha256');
  }

  private prune(): void {
    const now = this.now();
    for (const [jti, until] of this.seen) if (until < now) this.seen.delete(jti);
  }
}

/** RFC 9449 §4.3 check 9: `htu` equals the request URI without query and fragment (RFC 3986 §6 normalisation). */
function sameTarget(htu: string, url: string): boolean {
  try {
    const a = new URL(htu);
    const b = new URL(url);
    const path = (u: URL) => u.pathname.replace(/\/+$/, '') || '/';
    return a.protocol === b.protocol && a.host === b.host && path(a) === path(b);
  } catch {
    return false;
  }
}

function invalid(message: string, cause?: unknown): BrokerError {
  return new BrokerError('unauthenticated', message, { ...(cause === undefined ? {} : { cause }), hint: 'run: broker login' });
}
