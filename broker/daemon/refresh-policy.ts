/**
 * When the daemon refreshes task credentials and which ones it may still hand out. Pure functions of
 * times in milliseconds, so the rules can be checked on their own.
 *
 * The clients' own refresh windows: boto3 refreshes when 15 min are left (advisory) and must at 10
 * min (botocore `credentials.py`, `_DEFAULT_ADVISORY_REFRESH_TIMEOUT` and
 * `_DEFAULT_MANDATORY_REFRESH_TIMEOUT`); the JS SDK v3 at 5 min (`@aws-sdk/credential-provider-node`,
 * `credentialsTreatedAsExpired`); Go SDK v2 when expired (`aws.CredentialsCache`, no expiry window by
 * default). boto3 calls credential_process on
 * every request while under 15 min, so the daemon aims to hand out credentials with at least 15 min
 * left, refreshing a little before that, and at the latest when a third of the lifetime remains.
 *
 * A 15-minute credential (STS's minimum, 900 s) cannot have 15 min left when handed out after any
 * time at all; for lifetimes that short the floor is two thirds of the lifetime (10 min for 15-min
 * credentials, which is boto3's mandatory window: it keeps working, refreshing through us often).
 */

/** boto3's advisory refresh window (botocore credentials.py `_advisory_refresh_timeout`). */
export const ADVISORY_WINDOW_MS = 15 * 60_000;
/** Time to get a refresh done before credentials fall under the hand-out floor. */
export const REFRESH_LEAD_MS = 2 * 60_000;
/** Never refresh a credential younger than this (no refresh loop for very short lifetimes). */
export const MIN_AGE_MS = 60_000;
/** Credentials this close to expiry are useless to a client: treated as expired. */
export const EXPIRY_SAFETY_MS = 30_000;

export interface HeldCredentials {
  /** When the daemon received them. */
  issuedAt: number;
  /** Their Expiration. */
  expiresAt: number;
}

/** The least time left a credential may have when handed to a client. */
export function handOutFloor(c: HeldCredentials): number {
  const lifetime = Math.max(0, c.expiresAt - c.issuedAt);
  return Math.min(ADVISORY_WINDOW_MS, (lifetime * 2) / 3);
}

/**
 * When to fetch the next credential: when a third of the lifetime remains, or earlier if that is
 * needed to stay above the hand-out floor; never, if these already outlive the task session (the
 * service stops re-issuing at its end, and a task session ends for good).
 */
export function refreshAt(c: HeldCredentials, sessionEndsAt: number): number {
  if (c.expiresAt >= sessionEndsAt) return Number.POSITIVE_INFINITY;
  const lifetime = c.expiresAt - c.issuedAt;
  const before = Math.max(lifetime / 3, handOutFloor(c) + REFRESH_LEAD_MS);
  return Math.max(c.issuedAt + MIN_AGE_MS, c.expiresAt - before);
}

/** May these be handed out now without first waiting for fresh ones? */
export function canHandOut(c: HeldCredentials, sessionEndsAt: number, now: number): boolean {
  if (!isUsable(c, now)) return false;
  // Credentials that outlive the task session are the last ones it will get.
  if (c.expiresAt >= sessionEndsAt) return true;
  return c.expiresAt - now >= handOutFloor(c);
}

/** Not yet expired (with a margin): what the daemon may serve while it cannot refresh. */
export function isUsable(c: HeldCredentials, now: number): boolean {
  return c.expiresAt - now > EXPIRY_SAFETY_MS;
}

/**
 * Exponential back-off with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"):
 * a uniformly random wait up to min(cap, base·2^attempt), so many daemons retrying after the same
 * outage do not hit the service in lock-step.
 */
export function backoffDelay(attempt: number, random: () => number = Math.random, baseMs = 1_000, capMs = 60_000): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.max(250, Math.floor(random() * ceiling));
}
