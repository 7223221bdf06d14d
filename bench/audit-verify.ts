/**
 * bench/audit-verify: records/s of the real `broker audit verify --db` over a store of N records
 * (default 1,000,000) with a signed checkpoint every `--every` records (default 100, the service's
 * default), built with the store's own append path and the service's checkpointer. A script, not a
 * test: it prints figures. The store is built in a temporary directory (about 0.5 GB for 1,000,000
 * records), then verified `--runs` times (default 3); the wall time of the whole command is
 * measured, Node's start included. `--store DIR` keeps the store (and its keys) there and reuses
 * them on the next run.
 *
 *   bench/audit-verify [--json] [--records N] [--every N] [--runs N] [--store DIR]
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateSigningJwk, loadSigningKeys } from '../broker/identity/broker-tokens.js';
import { createLogger } from '../broker/log.js';
import { AuditCheckpointer } from '../broker/server/audit-checkpoints.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import type { SqliteDatabase } from '../broker/store/sqlite/database.js';
import { BROKER_BIN } from '../test/peers/paths.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
}
const RECORDS = Number(arg('--records') ?? 1_000_000);
const EVERY = Number(arg('--every') ?? 100);
const RUNS = Number(arg('--runs') ?? 3);
const json = process.argv.includes('--json');
const keep = arg('--store');
const dir = keep ?? mkdtempSync(join(tmpdir(), 'broker-bench-audit-'));
const db = join(dir, 'broker.db');
const jwks = join(dir, 'audit-jwks.json');

async function build(): Promise<number> {
  mkdirSync(dir, { recursive: true });
  const keyFile = join(dir, 'audit-key.json');
  writeFileSync(keyFile, JSON.stringify(await generateSigningJwk('bench-audit')), { mode: 0o600 });
  const [key] = await loadSigningKeys([{ file: keyFile }], dir, 'audit.signingKeys');
  writeFileSync(jwks, JSON.stringify({ keys: [key!.publicJwk] }));
  const built = Date.now();
  const store = new SqliteStore(db);
  // The bench's own shortcut: many records per transaction and no fsync, or building takes hours.
  const sql = (store as unknown as { sql: SqliteDatabase }).sql;
  sql.db.exec('PRAGMA synchronous = OFF');
  const cp = new AuditCheckpointer({ log: store.auditLog, key: key!, everyRecords: Number.MAX_SAFE_INTEGER, everySeconds: 86_400, logger: createLogger({ level: 'error' }), now: Date.now });
  let written = 0;
  while (written < RECORDS) {
    const n = Math.min(EVERY - 1, RECORDS - written);
    sql.write('bench', () => {
      for (let i = 0; i < n; i++) {
        const k = written + i;
        // Shaped like the service's records: a credentials.issue with its session, key id and detail.
        store.auditLog.appendInTransaction({
          event: 'credentials.issue', decision: 'issued', developer: `dev${k % 97}@example.com`, template: 'deploy-lambda',
          sessionId: `ts_${k.toString(36).padStart(10, '0')}`, accessKeyId: `ASIA${k.toString(16).toUpperCase().padStart(16, '0')}`,
          roleSessionName: `broker-dev${k % 97}-${k}`, expiration: '2026-12-04T12:00:00.000Z', detail: { agent: 'claude-code', durationSeconds: 3600 },
        });
      }
    });
    written += n;
    if (written < RECORDS) { await cp.checkpoint(); written++; }
  }
  await store.close();
  return Date.now() - built;
}

try {
  const reuse = keep !== undefined && existsSync(db) && existsSync(jwks);
  const buildMs = reuse ? 0 : await build();
  const runs: number[] = [];
  let records = 0;
  for (let r = 0; r < RUNS; r++) {
    const t = process.hrtime.bigint();
    const out = spawnSync(process.execPath, [BROKER_BIN, 'audit', 'verify', '--db', db, '--keys', jwks, '--json'], { encoding: 'utf8', maxBuffer: 1 << 24 });
    const ms = Number(process.hrtime.bigint() - t) / 1e6;
    const report = JSON.parse(out.stdout) as { ok: boolean; records: number };
    if (out.status !== 0 || !report.ok) throw new Error(`verify failed (exit ${out.status}): ${out.stdout.slice(0, 500)} ${out.stderr}`);
    records = report.records;
    runs.push(ms);
  }
  const best = Math.min(...runs);
  const median = [...runs].sort((a, b) => a - b)[Math.floor(runs.length / 2)]!;
  const result = {
    records, checkpointEvery: EVERY, storeMb: Math.round(statSync(db).size / 1e6), buildSeconds: buildMs / 1000,
    verifyMs: runs.map((m) => Math.round(m)), recordsPerSecondMedian: Math.round(records / (median / 1000)), recordsPerSecondBest: Math.round(records / (best / 1000)),
    goal: 200_000, node: process.version,
  };
  if (json) console.log(JSON.stringify(result, null, 2));
  else {
    console.log(`store: ${records} records, a checkpoint every ${EVERY}, ${result.storeMb} MB${reuse ? ' (reused)' : `, built in ${result.buildSeconds.toFixed(1)} s`}`);
    console.log(`broker audit verify --db: ${result.verifyMs.join(' / ')} ms → median ${result.recordsPerSecondMedian.toLocaleString('en')} records/s (best ${result.recordsPerSecondBest.toLocaleString('en')}; goal ≥ 200,000)`);
  }
} finally {
  if (!keep) rmSync(dir, { recursive: true, force: true });
}
