/** One segment of a parallel audit verification (audit-parallel.ts), in a worker thread. */
import { DatabaseSync } from 'node:sqlite';
import { parentPort, workerData } from 'node:worker_threads';
import { AuditKeySet, walkChain } from '../audit-verify.js';
import type { SegmentJob, SettledWalk } from './audit-parallel.js';
import { sqliteChainSource } from './audit-chain-source.js';

const job = workerData as SegmentJob;
const db = new DatabaseSync(job.path, { readOnly: true });
db.exec('BEGIN');
const keys = await AuditKeySet.of(job.jwks);
const w = await walkChain(sqliteChainSource(db), job.start, job.offHost, keys, job.skip, job.throughSeq);
const checked = await Promise.all(w.checkpoints.map((c) => c.checked));
const settled: SettledWalk = { ...w, checkpoints: w.checkpoints.map((c, i) => ({ ...c, checked: checked[i]! })) };
db.exec('COMMIT');
db.close();
parentPort!.postMessage(settled);
