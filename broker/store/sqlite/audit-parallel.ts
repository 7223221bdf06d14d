import { Worker } from 'node:worker_threads';
import type { JWK } from 'jose';
import type { Checked, ChainSource, OffHostAnchor, StoreCheckpoint, Walk, Walker, WalkStart } from '../audit-verify.js';
import { walkChain } from '../audit-verify.js';

/** Below this, one walk is as fast as two (a worker's start costs tens of milliseconds). */
const PARALLEL_FROM = 200_000;

/** What a worker posts back: a Walk whose checkpoint checks are done. */
export type SettledWalk = Omit<Walk, 'checkpoints'> & { checkpoints: (Omit<StoreCheckpoint, 'checked'> & { checked: Checked })[] };

export interface SegmentJob { path: string; start: WalkStart; throughSeq: number; offHost: OffHostAnchor[]; jwks: JWK[]; skip: number | undefined }

/**
 * A full walk in two halves at once: this thread walks 1..mid, a worker (its own read-only
 * connection) mid+1..last, starting from the stored hash at mid. The second half counts only if
 * the first verifies through mid (then that stored hash is the chain's); otherwise the first
 * half's break is the answer, as in one walk.
 */
export function parallelWalker(path: string, src: ChainSource, lastSeq: number, jwks: JWK[], minRecords = PARALLEL_FROM): Walker {
  return async (start, offHost, keys, skip) => {
    const whole = () => walkChain(src, start, offHost, keys, skip, lastSeq);
    if (start.afterSeq !== 0 || lastSeq < minRecords) return whole();
    const mid = Math.floor(lastSeq / 2);
    const row = src.row(mid);
    if (!row) return whole();
    const job: SegmentJob = { path, start: { afterSeq: mid, prev: row[14], count: mid, sawV2: (row[15] ?? 1) === 2 }, throughSeq: lastSeq, offHost, jwks, skip };
    const worker = new Worker(new URL('./audit-segment-worker.js', import.meta.url), { workerData: job });
    const second = new Promise<SettledWalk>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`the verifying worker exited with ${code}`)));
    });
    second.catch(() => undefined);
    let first: Walk;
    try {
      first = await walkChain(src, start, offHost, keys, skip, mid);
    } catch (e) {
      await worker.terminate();
      throw e;
    }
    if (first.problem || first.lastSeq !== mid) {
      await worker.terminate();
      return first;
    }
    const b = await second;
    await worker.terminate();
    return {
      records: first.records + b.records, firstSeq: first.firstSeq, lastSeq: b.firstSeq === null ? first.lastSeq : b.lastSeq, problem: b.problem,
      checkpoints: [...first.checkpoints, ...b.checkpoints.map((c) => ({ ...c, checked: Promise.resolve(c.checked) }))],
      anchors: [...first.anchors, ...b.anchors],
    };
  };
}
