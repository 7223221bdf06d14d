import { CompactSign } from 'jose';
import type { SigningKey } from '../identity/broker-tokens.js';
import type { Logger } from '../log.js';
import type { AuditEvent } from '../store/audit-event.js';
import {
  AuditKeySet, BROKEN_ACCEPTED_EVENT, CHECKPOINT_EVENT, CHECKPOINT_TYP, verifyTail,
  type CheckpointPayload, type ChainSource,
} from '../store/audit-verify.js';
import { BrokerError } from '../errors.js';

/** The parts of the SQLite audit log the checkpointer uses. */
export interface CheckpointedLog {
  head(): { seq: number; hash: string; event: string } | undefined;
  latestCheckpoint(): { seq: number; detail: { seq: number; count: number } } | undefined;
  count(afterSeq: number, throughSeq: number): number;
  /** Records after this seq that are not checkpoints. */
  recordsAfter(seq: number): number;
  append(e: AuditEvent): Promise<void>;
  onRecord: ((e: AuditEvent) => void) | undefined;
}

export async function signCheckpoint(p: CheckpointPayload, key: SigningKey): Promise<string> {
  return new CompactSign(new TextEncoder().encode(JSON.stringify(p)))
    .setProtectedHeader({ alg: 'ES256', kid: key.kid, typ: CHECKPOINT_TYP })
    .sign(key.privateKey);
}

/**
 * Writes a signed checkpoint (an `audit.checkpoint` record) every `everyRecords` records, and every
 * `everySeconds` when anything was recorded since the last one, and one at stop. Signing never
 * holds a write lock: the checkpoint covers the last record when it was read, later records are
 * covered by the next one.
 */
export class AuditCheckpointer {
  private pending = 0;
  private running: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private covered: { seq: number; count: number } | undefined;

  constructor(private readonly o: {
    log: CheckpointedLog; key: SigningKey; everyRecords: number; everySeconds: number; logger: Logger; now: () => number;
  }) {
    const last = o.log.latestCheckpoint();
    if (last) this.covered = { seq: last.detail.seq, count: last.detail.count };
  }

  start(): void {
    this.o.log.onRecord = (e) => {
      if (e.event === CHECKPOINT_EVENT) return;
      if (++this.pending >= this.o.everyRecords) void this.checkpoint();
    };
    this.timer = setInterval(() => { void this.checkpoint(); }, this.o.everySeconds * 1000);
    this.timer.unref();
  }

  /** One checkpoint now, if anything was recorded since the last (one at a time). */
  checkpoint(): Promise<void> {
    this.running ??= this.write().finally(() => {
      this.running = undefined;
      // Records that came in while this one was signed.
      if (this.pending >= this.o.everyRecords && this.o.log.onRecord) void this.checkpoint();
    });
    return this.running;
  }

  private async write(): Promise<void> {
    try {
      const head = this.o.log.head();
      const base = this.covered ?? { seq: 0, count: 0 };
      if (!head || this.o.log.recordsAfter(base.seq) === 0) return;
      this.pending = 0;
      const count = base.count + this.o.log.count(base.seq, head.seq);
      const p: CheckpointPayload = { seq: head.seq, head: head.hash, at: new Date(this.o.now()).toISOString(), count };
      const jws = await signCheckpoint(p, this.o.key);
      await this.o.log.append({ event: CHECKPOINT_EVENT, decision: 'signed', detail: { jws, seq: p.seq, head: p.head, count: p.count } });
      this.covered = { seq: p.seq, count };
    } catch (e) {
      // The next record or tick tries again; a record the store cannot write fails on its own.
      this.o.logger.warn({ err: (e as Error).message }, 'audit checkpoint could not be written; retrying with the next records');
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.o.log.onRecord = undefined;
    await this.running;
    await this.checkpoint();
  }
}

/**
 * The start-up check of the audit log: from the last checkpoint to the end (README, "Audit log").
 * A broken chain stops the start, unless `accept`: then an `audit.broken` record says what was broken.
 */
export async function checkAuditAtStart(o: {
  source: ChainSource; log: CheckpointedLog; keys: SigningKey[] | undefined; ephemeral: boolean; accept: boolean; dbPath: string; logger: Logger;
}): Promise<void> {
  const keys = await AuditKeySet.of((o.keys ?? []).map((k) => k.publicJwk), 'audit.signingKeys');
  const started = Date.now();
  const { report, from, anchorUnverified } = await verifyTail(o.source, keys, { trustUnknownAnchor: o.ephemeral || !o.keys });
  if (anchorUnverified) {
    o.logger.warn({ from }, 'the last audit checkpoint is signed by a key this service no longer has (ephemeral audit keys die with the process); its head is taken as is');
  }
  const bad = report.firstBad ?? report.problems[0];
  if (!bad) {
    o.logger.info({ from, records: report.records, ms: Date.now() - started }, 'audit log verified since the last checkpoint');
    return;
  }
  const what = `${bad.kind}${bad.seq !== null ? ` at seq ${bad.seq}` : ''}`;
  if (!o.accept) {
    throw new BrokerError('audit_unavailable', `the audit log is broken (${what}): ${bad.message}`, {
      hint: `see every problem with: broker audit verify --db ${o.dbPath}; restore the store from a backup, or start with --accept-broken-audit to go on (recorded in the audit log)`,
    });
  }
  o.logger.error({ kind: bad.kind, seq: bad.seq, problems: report.problems.length }, `the audit log is broken (${what}); starting anyway (--accept-broken-audit)`);
  await o.log.append({
    event: BROKEN_ACCEPTED_EVENT, decision: 'allowed', reason: `started with --accept-broken-audit: ${bad.message}`,
    detail: { problems: report.problems.slice(0, 20).map((p) => ({ kind: p.kind, seq: p.seq, message: p.message })) },
  });
}
