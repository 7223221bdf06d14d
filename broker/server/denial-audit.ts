import type { Logger } from '../log.js';
import type { AuditEventName } from '../store/audit-event.js';
import type { AuditLog } from '../store/store.js';

/**
 * A refusal on an unauthenticated route that no authenticated developer owns, or a start refused by
 * a template's limits (sessions/task-session-service.ts: an agent retrying in a loop must not
 * flood the audit log either).
 */
export interface Denial {
  event: Extract<AuditEventName, 'login' | 'token.refresh' | 'login.revoke' | 'session.start'>;
  /** A reason from a fixed set (never request text), so keys stay few. */
  reason: string;
  /** Who, when a verified token names them (a genuine refresh token with a bad proof); else the address. */
  developer?: string | undefined;
  /** The template whose limit refused a start. */
  template?: string | undefined;
  /** The client's address, for anonymous refusals. */
  address?: string | undefined;
}

interface Window {
  denial: Denial;
  start: number;
  /** Denials after the first, not written yet. */
  pending: number;
}

/** The key of the shared window denials fold into once a window holds `maxKeys` keys. */
const OVERFLOW = '*';

/**
 * The audit of anonymous refusals (bad ID tokens, bad refresh tokens, malformed bodies, rate-limit
 * refusals), in aggregate: per (event, reason, developer-or-address) and window, the first refusal
 * is written at once (count 1), so a single one is visible promptly; later ones are counted and
 * written as one record with their count when the window ends (a timer), or at shutdown. So N
 * refusals in a window cost at most two records per key, whatever N, and the counts add up to N.
 * At most `maxKeys` keys per window: past that, refusals fold into one key per (event, reason)
 * whose address is `*`, so an attacker with many addresses grows neither memory nor the table
 * without bound. Each refusal's detail goes to the server log, not here.
 */
export class DenialAudit {
  private readonly windows = new Map<string, Window>();
  private timer: NodeJS.Timeout | undefined;
  private readonly now: () => number;

  constructor(private readonly deps: { auditLog: AuditLog; log: Logger; windowMs: number; maxKeys: number; now?: () => number }) {
    this.now = deps.now ?? Date.now;
  }

  /** Flushes ended windows every quarter window (unref'd: never keeps the process alive). */
  start(): void {
    this.timer ??= setInterval(() => { void this.flush(); }, Math.max(250, this.deps.windowMs / 4)).unref();
  }

  /** Stops the timer and writes every pending count. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.flush(true);
  }

  async record(d: Denial): Promise<void> {
    const now = this.now();
    let key = keyOf(d);
    let w = this.windows.get(key);
    if (w && now >= w.start + this.deps.windowMs) {
      this.windows.delete(key);
      await this.write(w, now);
      w = undefined;
    }
    if (!w && this.windows.size >= this.deps.maxKeys) {
      d = { event: d.event, reason: d.reason, template: d.template, address: OVERFLOW };
      key = keyOf(d);
      w = this.windows.get(key);
    }
    if (w) {
      w.pending++;
      return;
    }
    // Set before the write: a refusal arriving meanwhile is counted in this window, not written.
    this.windows.set(key, { denial: d, start: now, pending: 0 });
    await this.append(d, 1, { windowStart: iso(now) });
  }

  /** Writes the counts of windows that have ended (all of them with `all`), and forgets those windows. */
  async flush(all = false): Promise<void> {
    const now = this.now();
    for (const [key, w] of [...this.windows]) {
      if (!all && now < w.start + this.deps.windowMs) continue;
      this.windows.delete(key);
      await this.write(w, now);
    }
  }

  /** Keys of the current windows (bounded by maxKeys plus the overflow keys). */
  get keys(): number {
    return this.windows.size;
  }

  private async write(w: Window, now: number): Promise<void> {
    if (w.pending > 0) await this.append(w.denial, w.pending, { windowStart: iso(w.start), windowEnd: iso(Math.min(now, w.start + this.deps.windowMs)) });
  }

  private async append(d: Denial, count: number, window: { windowStart: string; windowEnd?: string }): Promise<void> {
    try {
      await this.deps.auditLog.append({
        event: d.event, decision: 'denied', reason: d.reason, ...(d.developer ? { developer: d.developer } : {}), ...(d.template ? { template: d.template } : {}),
        detail: { aggregated: true, count, ...(d.developer ? {} : { address: d.address }), ...window },
      });
    } catch (e) {
      // The refusal stands whether or not it could be recorded.
      this.deps.log.error({ err: (e as Error).message, event: d.event, reason: d.reason, count }, 'could not record refused requests in the audit log');
    }
  }
}

function keyOf(d: Denial): string {
  return JSON.stringify([d.event, d.reason, d.template ?? null, d.developer ? `developer:${d.developer}` : `address:${d.address}`]);
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
