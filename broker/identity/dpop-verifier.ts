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
export const MAX_PROOF_AGE_SECONDS = 120;
const MAX_PROOF_CHARS = 4096;
/** Proofs remembered at most, by default: a proof costs a genuine token to present, so this is far beyond any real load. */
const DEFAULT_MAX_REMEMBERED = 100_000;
/** Seen jtis are kept in buckets of this many ms, each dropped whole once all its jtis may be forgotten. */
const BUCKET_MS = 10_000;

export interface DpopVerifierOptions {
  clockToleranceSeconds: number;
  /** Proofs remembered at once; when full, new proofs are refused (429) rather than an old one forgotten. */
  maxRemembered?: number;
  now?: () => number;
}

/**
 * The jtis of proofs seen, each kept until the proof can no longer pass the age check, in time
 * buckets: a lookup asks the ~16 live buckets, and expired buckets are dropped whole, so no request
 * scans every entry. Bounded: when full it refuses to take more rather than forget one early, which
 * would let that proof be replayed.
 */
class SeenProofs {
  /** Bucket end (ms) → the jtis that may be forgotten at or after it. Insertion order is time order only roughly, so ends are checked, not assumed. */
  private readonly buckets = new Map<number, Set<string>>();
  private size = 0;

  constructor(private readonly max: number) {}

  /** Drops the buckets whose every jti may be forgotten at `now`. */
  private drop(now: number): void {
    for (const [end, jtis] of this.buckets) {
      if (end <= now) {
        this.size -= jtis.size;
        this.buckets.delete(end);
      }
    }
  }

  /** 'seen' if `jti` is remembered, 'full' if it cannot be remembered, else remembers it until `until` (ms). */
  add(jti: string, until: number, now: number): 'added' | 'seen' | 'full' {
    this.drop(now);
    for (const jtis of this.buckets.values()) if (jtis.has(jti)) return 'seen';
    if (this.size >= this.max) return 'full';
    // The bucket's end is at or after `until`: a jti is never forgotten before its time.
    const end = Math.ceil(until / BUCKET_MS) * BUCKET_MS;
    let bucket = this.buckets.get(end);
    if (!bucket) this.buckets.set(end, (bucket = new Set()));
    bucket.add(jti);
    this.size++;
    return 'added';
  }

  /** The ms until the earliest bucket may be dropped (for Retry-After). */
  msUntilRoom(now: number): number {
    let earliest = Infinity;
    for (const end of this.buckets.keys()) earliest = Math.min(earliest, end);
    return Number.isFinite(earliest) ? Math.max(0, earliest - now) : 0;
  }

  get count(): number {
    return this.size;
  }
}

/**
 * Checks of RFC 9449 §4.3: one well-formed JWS whose `typ` is `dpop+jwt`, an allowed asymmetric
 * `alg`, a signature by the *public* key in its `jwk` header, `htm` and `htu` equal to this request,
 * a recent `iat`, and a `jti` not seen before (§11.1 replay). Returns the key's RFC 7638 thumbprint
 * (`jkt`), which is what tokens are bound to (`cnf.jkt`, §6.1).
 */
export class DpopVerifier {
  private readonly seen: SeenProofs;
  private readonly now: () => number;

  constructor(private readonly opts: DpopVerifierOptions) {
    this.now = opts.now ?? Date.now;
    this.seen = new SeenProofs(opts.maxRemembered ?? DEFAULT_MAX_REMEMBERED);
  }

  /** Proofs remembered now (for tests and the server log). */
  get remembered(): number {
    return this.seen.count;
  }

  async verify(proof: string | undefined, request: { method: string; url: string }): Promise<string> {
    // Fixed messages: a client that gets a proof wrong learns which rule, never anything secret.
    if (!proof) throw invalid('a DPoP proof is required (DPoP header)');
    if (proof.length > MAX_PROOF_CHARS || proof.includes(',')) throw invalid('the DPoP header must hold exactly one proof');
    const tolerance = this.opts.clockToleranceSeconds;
    let payload;
    let jwk: JWK | undefined;
    try {
      ({ payload, protectedHeader: { jwk } } = await jwtVerify(proof, EmbeddedJWK, {
        typ: 'dpop+jwt',
        algorithms: DPOP_ALGORITHMS,
        maxTokenAge: MAX_PROOF_AGE_SECONDS,
        clockTolerance: tolerance,
        requiredClaims: ['jti', 'htm', 'htu', 'iat'],
        currentDate: new Date(this.now()),
      }));
    } catch (e) {
      throw invalid('the DPoP proof is invalid', e);
    }
    if (payload.htm !== request.method) throw invalid('the DPoP proof was made for another HTTP method');
    if (typeof payload.htu !== 'string' || !sameTarget(payload.htu, request.url)) throw invalid('the DPoP proof was made for another URL');
    const iat = payload.iat!;
    // A proof from the future is as suspect as an old one.
    if (iat * 1000 > this.now() + tolerance * 1000) throw invalid('the DPoP proof is dated in the future');
    const jti = String(payload.jti);
    if (jti.length > 256) throw invalid('the DPoP proof is invalid');
    // Remembered for as long as the age check above can pass it: jose accepts while
    // floor(now / 1 s) - iat - tolerance <= max age, i.e. until the end of second iat + age + tolerance.
    const until = (iat + MAX_PROOF_AGE_SECONDS + tolerance + 1) * 1000;
    const now = this.now();
    switch (this.seen.add(jti, until, now)) {
      case 'seen': throw invalid('the DPoP proof was already used');
      case 'full': {
        const retry = Math.max(1, Math.ceil(this.seen.msUntilRoom(now) / 1000));
        throw new BrokerError('rate_limited', `too many DPoP proofs in the last ${MAX_PROOF_AGE_SECONDS + tolerance}s; retry in ${retry}s`, {
          cause: new Error('DPoP replay store full'), retryAfterSeconds: retry,
        });
      }
      case 'added': break;
    }
    return calculateJwkThumbprint(jwk!, 'sha256');
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
