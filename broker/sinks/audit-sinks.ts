/**
 * Feeds every configured audit sink from the audit log (README "Export to a SIEM"). The store is
 * the source of truth: each sink has a persisted cursor (store/sink-cursors.ts), the last `seq` it
 * took, and gets the records after it in bounded batches; the cursor moves only after the sink
 * has taken a batch, and is written to the store at most once a second while records flow and
 * whenever the sink has caught up (or stops). So delivery is at least once, in `seq` order, and
 * resumes after a restart from the cursor last written; a crash repeats what was delivered after
 * it, at most about a second's worth (the receiver deduplicates by `seq`).
 *
 * Never in an issuance's way: appends only wake the loops (AuditLog.onAppend), each sink runs on
 * its own, a failing one backs off (doubling, up to MAX_BACKOFF_MS) and its backlog grows, shown in
 * `broker admin status` and by `backlog()`. Failures go to the service log as a message, never the
 * records or the sink's headers.
 */
import type { Logger } from '../log.js';
import type { AuditLog } from '../store/store.js';
import type { SinkCursorRepository } from '../store/sink-cursors.js';
import type { AuditSink, SinkType } from './sink.js';

/** How often a loop looks for records without being woken (a missed wake, another writer). */
const IDLE_POLL_MS = 1000;
/**
 * After a wake, how long a loop lets records gather before it reads: under load one batch (one
 * write, one fsync) takes many issuances' records instead of one each.
 */
const GATHER_MS = 50;
/**
 * The cursor is written at most this often while records flow, and whenever the sink has caught
 * up: each write is a store commit (fsync'd) that would otherwise follow every issuance. A crash
 * repeats at most this much (at least once either way).
 */
const CURSOR_SAVE_MS = 1000;
const STOP_WAIT_MS = 5000;
const MIN_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 15_000;
/** Longest error message kept for status (an upstream body can be long). */
const MAX_ERROR_CHARS = 300;

export interface SinkStatus {
  id: string;
  type: SinkType;
  /** The last seq the sink took (0: nothing yet). */
  deliveredSeq: number;
  /** Records in the log after `deliveredSeq`. */
  backlog: number;
  /** Why the last delivery failed, while the sink is failing. */
  lastError?: string | undefined;
  /** When the sink last took a batch (ms). */
  lastDeliveredAt?: number | undefined;
}

export interface AuditSinksDeps {
  sinks: { sink: AuditSink; batchSize: number }[];
  auditLog: Pick<AuditLog, 'records' | 'onAppend'>;
  cursors: SinkCursorRepository;
  log: Logger;
  now?: () => number;
}

interface Feed {
  sink: AuditSink;
  batchSize: number;
  deliveredSeq: number;
  lastDeliveredAt?: number | undefined;
  lastError?: string | undefined;
  failures: number;
  /** The seq last written to the store, and when. */
  savedSeq: number;
  savedAt: number;
  /** Resolves the loop's current wait early (a wake, or stop). */
  wake?: (() => void) | undefined;
  pending: boolean;
  done?: Promise<void>;
}

export class AuditSinks {
  private readonly feeds: Feed[];
  private readonly now: () => number;
  private stopped = false;
  private unsubscribe?: () => void;
  private head = 0;

  constructor(private readonly deps: AuditSinksDeps) {
    this.now = deps.now ?? Date.now;
    this.feeds = deps.sinks.map(({ sink, batchSize }) => ({ sink, batchSize, deliveredSeq: 0, failures: 0, savedSeq: 0, savedAt: 0, pending: true }));
  }

  /** Loads the cursors and starts one loop per sink; returns once the cursors are read. */
  async start(): Promise<void> {
    if (this.feeds.length === 0) return;
    for (const f of this.feeds) {
      const c = await this.deps.cursors.get(f.sink.id);
      f.deliveredSeq = c.deliveredSeq;
      f.savedSeq = c.deliveredSeq;
      f.lastDeliveredAt = c.deliveredAt;
    }
    this.head = await this.deps.cursors.head();
    this.unsubscribe = this.deps.auditLog.onAppend(() => {
      // The head as of this append (one MAX(seq) per burst), so backlog() is exact without a query.
      void this.deps.cursors.head().then((h) => { this.head = Math.max(this.head, h); }, () => undefined);
      for (const f of this.feeds) this.wake(f);
    });
    for (const f of this.feeds) f.done = this.run(f);
  }

  /**
   * Per sink: how many records it has yet to take (for metrics: the sink lag), as of the last
   * append; synchronous, so a metrics scrape costs no query.
   */
  backlog(): { id: string; backlog: number }[] {
    return this.status().map(({ id, backlog }) => ({ id, backlog }));
  }

  status(): SinkStatus[] {
    return this.feeds.map((f) => ({
      id: f.sink.id, type: f.sink.type, deliveredSeq: f.deliveredSeq, backlog: Math.max(0, this.head - f.deliveredSeq),
      lastError: f.lastError, lastDeliveredAt: f.lastDeliveredAt,
    }));
  }

  /** The backlog as it is in the store now (status() uses the head last seen by the loops). */
  async refresh(): Promise<SinkStatus[]> {
    if (this.feeds.length) this.head = await this.deps.cursors.head();
    return this.status();
  }

  /**
   * Stops the loops and closes the sinks. A delivery in flight gets at most STOP_WAIT_MS to finish
   * (a hung receiver must not hold up the service's stop); one cut off is not counted as delivered,
   * so it comes again after the next start.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    for (const f of this.feeds) f.wake?.();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(this.feeds.map((f) => f.done)),
      new Promise<void>((r) => { timer = setTimeout(r, STOP_WAIT_MS); }),
    ]);
    clearTimeout(timer);
    await Promise.all(this.feeds.map((f) => f.sink.close().catch(() => undefined)));
  }

  private wake(f: Feed): void {
    f.pending = true;
    f.wake?.();
  }

  private async run(f: Feed): Promise<void> {
    while (!this.stopped) {
      if (!f.pending) {
        await this.waitWakeable(f, IDLE_POLL_MS);
        if (f.pending && !this.stopped) await this.waitBackoff(f, GATHER_MS);
      }
      if (this.stopped) break;
      f.pending = false;
      let batch;
      try {
        batch = await this.deps.auditLog.records(f.deliveredSeq, f.batchSize);
        if (batch.length === 0) {
          await this.save(f);
          continue;
        }
        this.head = Math.max(this.head, batch.at(-1)!.seq);
        await f.sink.deliver(batch);
      } catch (e) {
        f.failures += 1;
        f.lastError = errorText(e);
        const delay = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** Math.min(f.failures - 1, 10));
        this.deps.log.warn({ sink: f.sink.id, type: f.sink.type, afterSeq: f.deliveredSeq, failures: f.failures, retryInMs: delay, err: f.lastError }, 'audit sink delivery failed; retrying');
        f.pending = true;
        await this.waitBackoff(f, delay);
        continue;
      }
      const last = batch.at(-1)!.seq;
      const at = this.now();
      if (f.failures > 0) this.deps.log.info({ sink: f.sink.id, type: f.sink.type, failures: f.failures }, 'audit sink delivering again');
      f.deliveredSeq = last;
      f.lastDeliveredAt = at;
      f.failures = 0;
      f.lastError = undefined;
      // A full batch: there may be more right behind it.
      if (batch.length === f.batchSize) f.pending = true;
      if (at - f.savedAt >= CURSOR_SAVE_MS) await this.save(f);
    }
    await this.save(f);
  }

  /** Writes the cursor if it moved since it was last written. */
  private async save(f: Feed): Promise<void> {
    if (f.deliveredSeq === f.savedSeq) return;
    const seq = f.deliveredSeq;
    try {
      await f.sink.sync?.();
      await this.deps.cursors.advance(f.sink.id, seq, f.lastDeliveredAt ?? this.now());
      f.savedSeq = seq;
      f.savedAt = this.now();
    } catch (e) {
      // Delivered but not recorded: those records come again after a restart (at least once).
      this.deps.log.warn({ sink: f.sink.id, seq, err: errorText(e) }, 'audit sink cursor could not be saved; retrying');
    }
  }

  private waitWakeable(f: Feed, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => { clearTimeout(t); f.wake = undefined; resolve(); };
      const t = setTimeout(done, ms);
      f.wake = done;
    });
  }

  private waitBackoff(f: Feed, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => { clearTimeout(t); f.wake = undefined; resolve(); };
      const t = setTimeout(done, ms);
      f.wake = () => { if (this.stopped) done(); };
    });
  }
}

function errorText(e: unknown): string {
  const err = e as { message?: unknown; code?: unknown };
  const msg = typeof err?.message === 'string' && err.message ? err.message : String(e);
  const code = typeof err?.code === 'string' || typeof err?.code === 'number' ? ` (${err.code})` : '';
  const text = `${msg}${code}`.replace(/\s+/g, ' ');
  return text.length > MAX_ERROR_CHARS ? `${text.slice(0, MAX_ERROR_CHARS)}…` : text;
}
