import type { SessionView } from '../wire/service-api.js';
import { BrokerError } from '../errors.js';
import { backoffDelay } from './refresh-policy.js';

/**
 * What the daemon's two caches of task secrets (credential-cache.ts for AWS credentials,
 * vault-token-cache.ts for Vault tokens) share: one entry per task template, held in memory only;
 * an entry forgotten with its secrets when its session ends, is replaced or the developer logs out;
 * a wall-clock tick; back-off bookkeeping after upstream failures. How each one refreshes, and what
 * it serves meanwhile, stays in its own module.
 */

export interface TaskEntry {
  template: string;
  /** The task session, as the daemon last learned it from the service. */
  session: SessionView;
  failures: number;
  /** When the next upstream attempt is due after a failure. */
  retryAt: number;
  lastError?: BrokerError;
}

export interface TaskCacheOptions {
  now?: () => number;
  /**
   * How long a session the service said is ended or frozen is answered from memory with that
   * reason before the service is asked again (the daemon's status-check interval).
   */
  recheckMs?: number;
  random?: () => number;
  /** Wall-clock re-check of every entry; catches up after a suspended laptop resumes (timers pause). */
  tickMs?: number;
}

/** A session the service stopped (an admin ended it, a freeze): why, and when that was last learned. */
interface Withdrawn {
  sessionId: string;
  error: BrokerError;
  at: number;
}

export abstract class TaskCache<E extends TaskEntry> {
  protected readonly entries = new Map<string, E>();
  /**
   * Templates whose session the service stopped, by template: every call is refused with the
   * service's reason ("ended by an administrator: …") instead of a bare "no active session", and
   * without asking the service more than once per `recheckMs`.
   */
  private readonly withdrawn = new Map<string, Withdrawn>();
  private readonly recheckMs: number;
  protected readonly now: () => number;
  protected readonly random: () => number;
  private readonly ticker: NodeJS.Timeout;

  constructor(opts: TaskCacheOptions) {
    this.now = opts.now ?? Date.now;
    this.random = opts.random ?? Math.random;
    this.recheckMs = opts.recheckMs ?? 60_000;
    this.ticker = setInterval(() => this.tick(), opts.tickMs ?? 15_000);
    this.ticker.unref();
  }

  /** Re-checks every entry against the wall clock (timers stop while a machine sleeps). */
  abstract tick(): void;

  /** Drops the entry's references to its secrets (the GC reclaims them) and stops its timers. */
  protected abstract forget(e: E): void;

  /** Forget a template's session and what is held for it (ended, logged out, agent changed). */
  drop(template: string): void {
    const e = this.entries.get(template);
    if (e) this.dropEntry(e);
  }

  /**
   * Forget this entry — and only if it is still the one held for its template: an upstream request
   * of an entry that was since replaced must not drop its replacement.
   */
  protected dropEntry(e: E): void {
    this.forget(e);
    if (this.holds(e)) this.entries.delete(e.template);
  }

  /** Is this still the entry for its template? Not if it was replaced or dropped meanwhile. */
  protected holds(e: E): boolean {
    return this.entries.get(e.template) === e;
  }

  /** The sessions something is held for, as last learned from the service (`broker status` in an outage). */
  heldSessions(): SessionView[] {
    return [...this.entries.values()].map((e) => e.session);
  }

  clear(): void {
    for (const t of [...this.entries.keys()]) this.drop(t);
    this.withdrawn.clear();
  }

  /**
   * The service stopped this session (ended by an admin, frozen, the login revoked): what is held
   * for it goes now, and calls for its template are refused with `error` until the service says
   * otherwise (a new session, an unfreeze).
   */
  withdraw(template: string, sessionId: string, error: BrokerError): void {
    const e = this.entries.get(template);
    if (e && e.session.id === sessionId) this.dropEntry(e);
    this.withdrawn.set(template, { sessionId, error, at: this.now() });
  }

  /** Throws the reason a withdrawn session was stopped, unless it is time to ask the service again. */
  protected refuseWithdrawn(template: string): void {
    const w = this.withdrawn.get(template);
    if (w && this.now() - w.at < this.recheckMs) throw w.error;
  }

  /**
   * After asking the service for the template's session: none, and it was withdrawn → its reason;
   * another session → the withdrawal is over; the same one → asked again now (a re-issue will say
   * whether it is still frozen).
   */
  protected settleWithdrawn(template: string, found: SessionView | undefined): void {
    const w = this.withdrawn.get(template);
    if (!w) return;
    if (!found) {
      w.at = this.now();
      throw w.error;
    }
    this.withdrawn.delete(template);
  }

  /** An entry new for its template (a task start): nothing withdrawn stands for it any more. */
  protected forgetWithdrawn(template: string): void {
    this.withdrawn.delete(template);
  }

  close(): void {
    clearInterval(this.ticker);
    this.clear();
  }

  /** After a failed upstream attempt: the next is due after an exponential back-off with jitter. */
  protected backOff(e: E, error: BrokerError): void {
    e.lastError = error;
    e.retryAt = this.now() + backoffDelay(e.failures++, this.random);
  }

  protected resetBackOff(e: E): void {
    e.failures = 0;
    delete e.lastError;
  }
}

/** An upstream request finished for an entry that is no longer held (internal; never leaves a cache). */
export class Superseded extends Error {}

/** Errors that say the task session is gone (ended elsewhere, expired, template removed): stop serving it at once. */
export function sessionGone(error: BrokerError): boolean {
  return error.code === 'conflict' || error.code === 'not_found' || error.code === 'forbidden' || error.code === 'frozen';
}

export function sessionEnded(template: string, endsAt: number): BrokerError {
  return new BrokerError('conflict', `the "${template}" task session ended at ${new Date(endsAt).toISOString()}`, {
    hint: `start a new one: broker task ${template}`,
  });
}

export function noActiveSession(template: string): BrokerError {
  return new BrokerError('not_found', `no active "${template}" task session`, { hint: `start one: broker task ${template}` });
}

/** A caller's retry, too, waited on an entry that was replaced meanwhile: it does not chase a third. */
export function changedWhileWaiting(template: string): BrokerError {
  return new BrokerError('conflict', `the "${template}" task session changed while this request waited`, { hint: 'try again' });
}
