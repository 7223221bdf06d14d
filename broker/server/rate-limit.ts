/**
 * Per-developer fixed-window counter for requests that can issue credentials. In memory: with one
 * service replica that is the whole truth; several replicas each enforce their own window.
 */
export class RateLimiter {
  private readonly windows = new Map<string, { start: number; count: number }>();

  constructor(private readonly perMinute: number, private readonly now: () => number = Date.now) {}

  /** Returns 0 if allowed, otherwise the seconds until the window resets. */
  take(key: string): number {
    const now = this.now();
    let w = this.windows.get(key);
    if (!w || now - w.start >= 60_000) {
      w = { start: now, count: 0 };
      this.windows.set(key, w);
      if (this.windows.size > 10_000) this.prune(now);
    }
    if (w.count >= this.perMinute) return Math.ceil((w.start + 60_000 - now) / 1000);
    w.count += 1;
    return 0;
  }

  private prune(now: number): void {
    for (const [k, w] of this.windows) if (now - w.start >= 60_000) this.windows.delete(k);
  }
}

/** A token bucket's shape: up to `burst` requests at once, refilled at `perMinute`. */
export interface BucketSpec { burst: number; perMinute: number }

interface Bucket { tokens: number; at: number }

export type AuthLimitDecision = { ok: true } | { ok: false; scope: 'address' | 'global'; retryAfterSeconds: number };

/**
 * Token buckets for the unauthenticated routes (`/v1/auth/*`): one per client address and one for
 * everyone, checked before the body is read and before any signature is verified, so a flood costs
 * the service a map lookup per request. Per-address buckets are kept in least-recently-used order
 * and bounded: past `maxAddresses` the oldest is dropped (it is a full bucket again if it comes
 * back; the global bucket still holds). In memory: with several replicas each has its own.
 */
export class AuthRateLimiter {
  private readonly addresses = new Map<string, Bucket>();
  private readonly global: Bucket;

  constructor(
    private readonly spec: { perAddress: BucketSpec; global: BucketSpec; maxAddresses: number },
    private readonly now: () => number = Date.now,
  ) {
    this.global = { tokens: spec.global.burst, at: this.now() };
  }

  take(address: string): AuthLimitDecision {
    const now = this.now();
    const key = addressKey(address);
    let mine = this.addresses.get(key);
    if (mine) this.addresses.delete(key); // re-inserted below: most recently used last
    else mine = { tokens: this.spec.perAddress.burst, at: now };
    this.addresses.set(key, mine);
    if (this.addresses.size > this.spec.maxAddresses) this.addresses.delete(this.addresses.keys().next().value!);
    refill(mine, this.spec.perAddress, now);
    if (mine.tokens < 1) return { ok: false, scope: 'address', retryAfterSeconds: wait(mine, this.spec.perAddress) };
    refill(this.global, this.spec.global, now);
    if (this.global.tokens < 1) return { ok: false, scope: 'global', retryAfterSeconds: wait(this.global, this.spec.global) };
    mine.tokens -= 1;
    this.global.tokens -= 1;
    return { ok: true };
  }

  /** Addresses tracked now (bounded by maxAddresses). */
  get trackedAddresses(): number {
    return this.addresses.size;
  }
}

function refill(b: Bucket, spec: BucketSpec, now: number): void {
  b.tokens = Math.min(spec.burst, b.tokens + ((now - b.at) / 60_000) * spec.perMinute);
  b.at = now;
}

/** Whole seconds until the bucket holds one token (RFC 9110 §10.2.3 Retry-After is in seconds). */
function wait(b: Bucket, spec: BucketSpec): number {
  return Math.max(1, Math.ceil(((1 - b.tokens) * 60) / spec.perMinute));
}

/**
 * The key of an address: an IPv4 address as it is; an IPv6 address by its /64, which one subscriber
 * usually holds whole (RFC 6177), so walking through it does not give a fresh bucket per address.
 */
export function addressKey(address: string): string {
  const a = address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
  if (!a.includes(':')) return a;
  const [head = '', tail = ''] = a.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = a.includes('::') ? [...left, ...Array(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right] : left;
  return `${groups.slice(0, 4).map((g) => g.toLowerCase().replace(/^0+(?=.)/, '')).join(':')}::/64`;
}
