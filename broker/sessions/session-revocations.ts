/**
 * Targeted revocation of STS credentials already issued: a session that is ended (by an admin, or
 * by its developer when the template says `aws.revokeOnEnd`) is added to a Deny in its template
 * role's own inline policy, conditioned on the `broker:session` tag its credentials carry.
 *
 * Never on the hot path: `revokeSessions` records the entries in the store (with their audit
 * records) and returns; a background writer brings each role's document in IAM up to date, one
 * write at a time per role, retried with back-off until IAM accepts (IAM is eventually consistent,
 * and may be down or throttling). When IAM accepted a document is recorded (`appliedAt`); the deny
 * takes effect some seconds to minutes after that (IAM User Guide, "Disabling permissions for
 * temporary security credentials": "It might take a few minutes for policy updates to take effect").
 *
 * Entries go once every credential they target has expired (`until`); when they no longer fit the
 * role's inline policy quota, the writer falls back to a role-wide `aws:TokenIssueTime` deny, which
 * revokes every credential of the role issued before it — loud: an audit record, an error log line
 * and a warning admins see (`warnings()`).
 */
import type { Logger } from '../log.js';
import type { AuditEvent } from '../store/audit-event.js';
import type { NewRevocation, RevocationRepository, RoleRevocationState } from '../store/session-revocations.js';
import type { AuditLog } from '../store/store.js';
import { KeyedLock } from './keyed-lock.js';

/** What a role's document denies; empty lists and no `issuedBefore`: no document at all. */
export interface RoleDeny {
  sessionIds: string[];
  sourceIdentities: string[];
  /** The role-wide fallback: credentials issued before this instant (ms) are denied. */
  issuedBefore?: number | undefined;
}

export interface RoleDenyWrite {
  /** `too-large`: nothing was written, the document would break the inline role policy quota. */
  outcome: 'written' | 'deleted' | 'too-large';
  /** The document's size as IAM counts it (whitespace excluded). */
  chars: number;
}

/** Where the role's deny document lives (IAM today: broker/aws/role-revocations.ts). */
export interface RoleDenyPolicies {
  /** Writes the document for `deny` (or removes it when there is nothing to deny); throws a BrokerError when IAM does not accept it. */
  apply(roleArn: string, deny: RoleDeny): Promise<RoleDenyWrite>;
}

/** A session to revoke: its id (the `broker:session` tag), its template's role, and when its last credential expires. */
/** One ended session whose STS credentials are to be denied until `until`, when the last of them expires. */
export interface SessionToRevoke {
  id: string;
  /** Whose session it is: the audit record of the revocation names them (the admin is in its detail). */
  developer: string;
  roleArn: string;
  /** ms since the epoch: the session's last issue + credential lifetime. */
  until: number;
}

/** The seam the admin routes call (issue 11, "Stop"). */
export interface SessionRevoker {
  revokeSessions(sessions: SessionToRevoke[], by: { admin: string; reason: string }): Promise<void>;
}

export interface RevocationWarning {
  roleArn: string;
  kind: 'fallback' | 'not-applied';
  message: string;
  since: number;
}

export interface FlushResult {
  roleArn: string;
  ok: boolean;
  outcome?: RoleDenyWrite['outcome'] | 'fallback';
  error?: string;
}

export interface SessionRevocationsDeps {
  store: { revocations: RevocationRepository; auditLog: AuditLog };
  policies: RoleDenyPolicies;
  log: Logger;
  now?: () => number;
  /** Back-off between failed writes of one role: doubles from `firstMs` up to `maxMs`. */
  retry?: { firstMs: number; maxMs: number };
  /** How often expired entries are pruned and outdated roles retried (start()). */
  intervalMs?: number;
}

/**
 * A pending revocation older than this is shown to admins as not applied (IAM refuses or is
 * unreachable): long enough for a few retries, short enough to notice.
 */
const NOT_APPLIED_WARNING_MS = 2 * 60_000;

export class SessionRevocations implements SessionRevoker {
  private readonly now: () => number;
  private readonly lock = new KeyedLock();
  private readonly retry: { firstMs: number; maxMs: number };
  /** Per role: consecutive failures, the last error, and the retry timer. In memory: the store says what is outdated. */
  private readonly failures = new Map<string, { attempts: number; error: string; since: number }>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly inFlight = new Set<Promise<unknown>>();
  private interval: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly deps: SessionRevocationsDeps) {
    this.now = deps.now ?? Date.now;
    this.retry = deps.retry ?? { firstMs: 1000, maxMs: 5 * 60_000 };
  }

  /** Records the sessions as revoked (audited `session.revoke pending`) and schedules their roles' writes. */
  async revokeSessions(sessions: SessionToRevoke[], by: { admin: string; reason: string }): Promise<void> {
    const owners = new Map(sessions.map((s) => [s.id, s.developer]));
    await this.record(sessions.map((s) => ({ roleArn: s.roleArn, kind: 'session' as const, value: s.id, until: s.until, revokedBy: by.admin, reason: by.reason })), owners);
  }

  /**
   * Offboarding: denies every credential whose SourceIdentity is the developer, on each role, until
   * `until` (the latest any of their credentials can live).
   */
  async revokeDeveloper(developer: string, roleArns: string[], until: number, by: { admin: string; reason: string }): Promise<void> {
    await this.record([...new Set(roleArns)].map((roleArn) => ({ roleArn, kind: 'source-identity' as const, value: developer, until, revokedBy: by.admin, reason: by.reason })));
  }

  private async record(entries: NewRevocation[], owners = new Map<string, string>()): Promise<void> {
    if (!entries.length) return;
    const events: AuditEvent[] = entries.map((e) => ({
      event: 'session.revoke', decision: 'pending', reason: e.reason,
      ...(e.kind === 'session' ? { sessionId: e.value, developer: owners.get(e.value) } : { developer: e.value }),
      detail: { roleArn: e.roleArn, kind: e.kind, revokedBy: e.revokedBy, until: new Date(e.until).toISOString() },
    }));
    await this.deps.store.revocations.add(entries, events);
    for (const role of new Set(entries.map((e) => e.roleArn))) this.schedule(role, 0);
  }

  /** Brings every outdated role's document up to date now, one attempt each; for tests and admin commands. */
  async flush(): Promise<FlushResult[]> {
    const roles = await this.deps.store.revocations.outdated();
    return Promise.all(roles.map((r) => this.write(r)));
  }

  /** Removes entries whose credentials have all expired, and rewrites (or deletes) those roles' documents. */
  async prune(): Promise<string[]> {
    const roles = await this.deps.store.revocations.prune(this.now());
    for (const r of roles) this.schedule(r, 0);
    if (roles.length) this.deps.log.info({ roles }, 'expired session revocations pruned');
    return roles;
  }

  /** What admins should know: roles under the role-wide fallback, and revocations IAM has not accepted. */
  async warnings(): Promise<RevocationWarning[]> {
    const out: RevocationWarning[] = [];
    const now = this.now();
    for (const s of await this.deps.store.revocations.roles()) {
      if (s.fallback) {
        out.push({
          roleArn: s.roleArn, kind: 'fallback', since: s.fallback.recordedAt,
          message: `every credential of ${s.roleArn} issued before ${new Date(s.fallback.issuedBefore).toISOString()} is denied (role-wide fallback: ${s.fallback.covered} revoked sessions did not fit the role's inline policy) until ${new Date(s.fallback.until).toISOString()}`,
        });
      }
      const pending = s.entries.filter((e) => e.appliedAt === null && e.coveredAt === null);
      const oldest = Math.min(...pending.map((e) => e.revokedAt));
      if (pending.length && now - oldest >= NOT_APPLIED_WARNING_MS) {
        const f = this.failures.get(s.roleArn);
        out.push({
          roleArn: s.roleArn, kind: 'not-applied', since: oldest,
          message: `${pending.length} revocation(s) on ${s.roleArn} not yet accepted by IAM${f ? ` after ${f.attempts} attempt(s): ${f.error}` : ''}`,
        });
      }
    }
    return out;
  }

  /** What the store says about one role (for admin status and tests). */
  state(roleArn: string): Promise<RoleRevocationState | undefined> {
    return this.deps.store.revocations.state(roleArn);
  }

  /** Writes what is outdated (left over from before a restart), then prunes and retries every interval. */
  start(): void {
    if (this.interval) return;
    this.stopped = false;
    const tick = () => {
      void this.track((async () => {
        try {
          await this.prune();
          for (const r of await this.deps.store.revocations.outdated()) if (!this.timers.has(r)) this.schedule(r, 0);
        } catch (e) {
          this.deps.log.error({ err: (e as Error).message }, 'revocation prune failed; retrying at the next interval');
        }
      })());
    };
    this.interval = setInterval(tick, this.deps.intervalMs ?? 60_000).unref();
    tick();
  }

  /** Stops the timers and waits for writes in progress; what is outdated stays in the store for the next start. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.interval) clearInterval(this.interval);
    this.interval = undefined;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    await Promise.allSettled([...this.inFlight]);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p)).catch(() => {});
    return p;
  }

  private schedule(roleArn: string, delayMs: number): void {
    if (this.stopped) return;
    const existing = this.timers.get(roleArn);
    if (existing) clearTimeout(existing);
    const timer = setTimeout(() => {
      this.timers.delete(roleArn);
      void this.track(this.write(roleArn));
    }, delayMs);
    timer.unref();
    this.timers.set(roleArn, timer);
  }

  /** One attempt at a role's document, serialized per role; a failure schedules the next with back-off. */
  private write(roleArn: string): Promise<FlushResult> {
    return this.lock.run(roleArn, async () => {
      try {
        const outcome = await this.writeOnce(roleArn);
        if (this.failures.delete(roleArn)) this.deps.log.info({ roleArn }, 'IAM accepted the revocation document after failures');
        return { roleArn, ok: true, ...(outcome ? { outcome } : {}) };
      } catch (e) {
        const error = (e as Error).message;
        const f = this.failures.get(roleArn) ?? { attempts: 0, error, since: this.now() };
        f.attempts++;
        f.error = error;
        this.failures.set(roleArn, f);
        const delay = Math.min(this.retry.maxMs, this.retry.firstMs * 2 ** (f.attempts - 1));
        this.deps.log.warn({ roleArn, attempts: f.attempts, retryInMs: delay, err: error }, 'revocation document not written; retrying');
        this.schedule(roleArn, delay);
        return { roleArn, ok: false, error };
      }
    });
  }

  private async writeOnce(roleArn: string): Promise<FlushResult['outcome']> {
    const repo = this.deps.store.revocations;
    const s = await repo.state(roleArn);
    if (!s || s.version <= s.appliedVersion) return undefined;
    const r = await this.deps.policies.apply(roleArn, denyOf(s));
    if (r.outcome !== 'too-large') {
      await this.applied(s);
      return r.outcome;
    }
    // The entries do not fit: every credential of the role issued up to now is denied instead. The
    // revoked sessions' credentials were all issued before their revocation was recorded (an ended
    // session gets no more), so a cutoff of now, rounded up to IAM's whole seconds, covers them.
    const maxSeq = Math.max(0, ...s.entries.map((e) => e.seq));
    const open = s.entries.filter((e) => e.coveredAt === null);
    const issuedBefore = Math.ceil(this.now() / 1000) * 1000;
    const until = Math.max(s.fallback?.until ?? 0, ...open.map((e) => e.until));
    await repo.setFallback(roleArn, { issuedBefore, until }, maxSeq, {
      event: 'revocation.fallback', decision: 'revoked',
      reason: `the revoked sessions no longer fit the role's inline policy (${r.chars} characters); every credential of the role issued before the cutoff is denied`,
      detail: { roleArn, issuedBefore: new Date(issuedBefore).toISOString(), until: new Date(until).toISOString(), sessions: open.length, chars: r.chars },
    });
    this.deps.log.error({ roleArn, issuedBefore: new Date(issuedBefore).toISOString(), sessions: open.length, chars: r.chars },
      'revocation fallback: every credential of the role issued before the cutoff is denied (the revoked sessions do not fit the inline policy quota)');
    const again = (await repo.state(roleArn))!;
    const r2 = await this.deps.policies.apply(roleArn, denyOf(again));
    if (r2.outcome === 'too-large') throw new Error(`the role-wide deny of ${roleArn} does not fit its inline policy quota either (${r2.chars} characters)`);
    await this.applied(again);
    return 'fallback';
  }

  private async applied(s: RoleRevocationState): Promise<void> {
    const at = this.now();
    const maxSeq = Math.max(0, ...s.entries.map((e) => e.seq));
    const fresh = s.entries.filter((e) => e.appliedAt === null);
    const events: AuditEvent[] = fresh.map((e) => ({
      event: 'session.revoke', decision: 'revoked', reason: e.reason,
      ...(e.kind === 'session' ? { sessionId: e.value } : { developer: e.value }),
      detail: { roleArn: s.roleArn, kind: e.kind, appliedAt: new Date(at).toISOString(), ...(e.coveredAt !== null ? { by: 'role-wide fallback' } : {}) },
    }));
    await this.deps.store.revocations.markApplied(s.roleArn, s.version, maxSeq, at, events);
  }
}

function denyOf(s: RoleRevocationState): RoleDeny {
  const open = s.entries.filter((e) => e.coveredAt === null);
  return {
    sessionIds: open.filter((e) => e.kind === 'session').map((e) => e.value),
    sourceIdentities: open.filter((e) => e.kind === 'source-identity').map((e) => e.value),
    ...(s.fallback ? { issuedBefore: s.fallback.issuedBefore } : {}),
  };
}
