/**
 * How long a task session and its AWS credentials last: the one rule, used by the service (API
 * `ttl`, every AssumeRole) and by `broker policy explain`, so an explanation never differs from what
 * the service does.
 *
 *   session     = min(requested ttl, template maxDuration)   (requested: 900..43200 s, limits/names.ts)
 *   credentials = min(template credentialLifetime, time left in the session), at least 900 s
 *
 * So the first credentials of a session last min(requested, maxDuration, credentialLifetime).
 * STS AssumeRole DurationSeconds is 900..43200 s (botocore sts service-2.json): a credential issued
 * when less than 900 s of its session remain still lives 900 s, and may outlive its session by up
 * to 15 minutes (docs/templates.md, "Durations"). The role's MaxSessionDuration may cap it further;
 * `broker policy check --aws` compares it with the template.
 */
import { formatDuration } from '../duration.js';
import { MAX_DURATION_SECONDS, MIN_DURATION_SECONDS } from '../limits/aws.js';
import type { TaskTemplate } from './schema.js';

/** The session's length: what was asked for, capped by the template's maxDuration. */
export function sessionSeconds(t: TaskTemplate, requestedTtl: number | undefined): number {
  return Math.min(requestedTtl ?? t.maxSessionSeconds, t.maxSessionSeconds);
}

/**
 * DurationSeconds of an AssumeRole under a session that ends at `sessionExpiresAt`: the template's
 * credential lifetime, or the time left in the session if shorter, but never under STS's 900 s floor
 * nor over its 43,200 s ceiling. Whole seconds left, read from one `now`, so a 30-minute task asks
 * for 1800 s, not 1799.
 */
export function credentialSeconds(t: TaskTemplate, sessionExpiresAt: number, now: number): number {
  const left = Math.floor((sessionExpiresAt - now) / 1000);
  return Math.max(MIN_DURATION_SECONDS, Math.min(t.credentialLifetimeSeconds, left, MAX_DURATION_SECONDS));
}

/**
 * Whole seconds by which credentials of `durationSeconds` issued at `now` outlive their session (0
 * if they do not; the milliseconds between a session's start and its first AssumeRole do not count).
 */
export function outlivesSessionSeconds(durationSeconds: number, sessionExpiresAt: number, now: number): number {
  return Math.max(0, Math.floor((now + durationSeconds * 1000 - sessionExpiresAt) / 1000));
}

export interface PlannedDurations {
  sessionSeconds: number;
  /** DurationSeconds of the session's first AssumeRole. */
  credentialSeconds: number;
  /** The rule, with this template's numbers, for people. */
  rule: string;
}

/** What a start with this `ttl` would get, as `broker policy explain` shows it. */
export function plannedDurations(t: TaskTemplate, requestedTtl: number | undefined): PlannedDurations {
  const session = sessionSeconds(t, requestedTtl);
  const now = 0;
  const requested = requestedTtl === undefined ? `requested ${formatDuration(t.maxSessionSeconds)} (default: maxDuration)` : `requested ${formatDuration(requestedTtl)}`;
  return {
    sessionSeconds: session,
    credentialSeconds: credentialSeconds(t, now + session * 1000, now),
    rule: `min(${requested}, maxDuration ${formatDuration(t.maxSessionSeconds)}, credentialLifetime ${formatDuration(t.credentialLifetimeSeconds)}), at least ${formatDuration(MIN_DURATION_SECONDS)}`,
  };
}
