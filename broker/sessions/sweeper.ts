/**
 * The service's periodic sweep: ends task sessions whose time is up (audited as `session.end`,
 * reason `expired`) and revokes the Vault tokens of ended sessions that are not revoked yet,
 * including revocations that failed earlier (Vault was down), least recently tried first. A token
 * whose revocation keeps failing is given up once it is past the latest Vault can keep it alive
 * (`vault.revoke expired`), so nothing is retried forever. It also ends sessions whose start never
 * completed (the service stopped in the middle of one), once no start could still be under way.
 * One sweep at a time; a sweep that fails is logged and the next one tries again.
 */
import type { Logger } from '../log.js';
import type { TaskSessionService } from './task-session-service.js';

/**
 * Longer than any start can take: one Vault login and token create (vault.requestTimeoutMs, at most
 * 60 s each) and one AssumeRole (aws.requestTimeoutMs, at most 10 s), with room to spare.
 */
export const START_GRACE_MS = 5 * 60_000;

export interface SweepResult {
  /** Sessions ended as expired in this sweep. */
  expired: number;
  /** Sessions ended because their start never completed. */
  incomplete: number;
  revoked: number;
  /** Revocations that failed and stay pending. */
  failed: number;
  /** Failed revocations given up: the token is past the latest it can live. */
  lapsed: number;
  /** Start requests expired (`request.expire`). */
  requestsExpired: number;
}

export class SessionSweeper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<SweepResult> | undefined;
  /** Failed revocations of the previous sweep: the same count again (Vault still down) is not logged again. */
  private lastFailed = 0;

  constructor(private readonly deps: { sessions: TaskSessionService; /** Start requests to expire (broker/requests/; by shape, so sessions/ does not depend on requests/). */
    requests?: { expire(): Promise<unknown[]> } | undefined; intervalSeconds: number; log: Logger }) {}

  /** Sweeps now (revocations left over from before a restart) and then every interval. */
  start(): void {
    if (this.timer) return;
    // unref: the sweeper alone never keeps the process alive.
    this.timer = setInterval(() => { void this.sweep(); }, this.deps.intervalSeconds * 1000).unref();
    void this.sweep();
  }

  /** Stops the timer and waits for a sweep in progress. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }

  sweep(): Promise<SweepResult> {
    this.running ??= this.run().finally(() => { this.running = undefined; });
    return this.running;
  }

  private async run(): Promise<SweepResult> {
    const result: SweepResult = { expired: 0, incomplete: 0, revoked: 0, failed: 0, lapsed: 0, requestsExpired: 0 };
    try {
      result.expired = (await this.deps.sessions.endExpired()).length;
      if (this.deps.requests) result.requestsExpired = (await this.deps.requests.expire()).length;
      result.incomplete = (await this.deps.sessions.endIncompleteStarts(START_GRACE_MS)).length;
      for (const r of await this.deps.sessions.revokePending()) {
        if (r.revoked) result.revoked++;
        else if (r.lapsed) result.lapsed++;
        else result.failed++;
      }
    } catch (e) {
      this.deps.log.error({ err: (e as Error).message }, 'session sweep failed; retrying at the next interval');
    }
    if (result.expired || result.requestsExpired || result.incomplete || result.revoked || result.lapsed || result.failed !== this.lastFailed) this.deps.log.info(result, 'session sweep');
    this.lastFailed = result.failed;
    return result;
  }
}
