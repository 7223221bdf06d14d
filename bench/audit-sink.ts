/**
 * bench/audit-sink: what one JSON-lines audit sink costs an issuance. A script, not a test: it
 * prints figures. Target (issue 12): under 10% per issuance.
 *
 * It starts the local peers (moto as STS, the test IdP) and four real `broker server`s on their own
 * SQLite files: no sink, one JSON-lines sink with fdatasync before each cursor write (the default), one without
 * fsync, and signed checkpoints (every 100 records) with the default sink. In each, a developer starts a deploy-lambda task, then the bench measures credential
 * issuances (`POST /v1/sessions/:id/credentials`: an STS AssumeRole and an audit record):
 *   - sequential: `--rounds` rounds of `--n` issuances per service, the services interleaved round by
 *     round (in a rotating order) so drift on a shared machine hits all alike; p50, p95 and mean per service;
 *   - concurrent: `--concurrent` clients at once, `--n` issuances per service and round, interleaved
 *     the same way; issuances/s.
 * Wall-clock times on a shared 2-core machine move by more than the sink costs, so it also reports
 * the service process's own CPU time per issuance (/proc/PID/stat, the sink's deferred work
 * included: read after a 2 s settle), which other load on the machine does not inflate. It checks
 * at the end that the sink's file holds every audit record of its store.
 *
 *   bench/audit-sink [--json] [--n N] [--rounds R] [--concurrent C]
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { startBrokerService, type BrokerService } from '../test/peers/broker-service.js';
import { startIdp, type TestIdp } from '../test/peers/idp.js';
import { createRole, startMoto } from '../test/peers/moto.js';
import { TEST_ROLES } from '../test/peers/stack.js';

interface Stats { p50: number; p95: number; mean: number; n: number }

function stats(ms: number[]): Stats {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
  return { p50: q(0.5), p95: q(0.95), mean: s.reduce((a, b) => a + b, 0) / s.length, n: s.length };
}

/** CPU time (user + system) the process has used, in ms, from /proc/PID/stat (Linux; clock ticks of 10 ms). */
function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  // After "pid (comm) ", field 3 is state; utime and stime are fields 14 and 15 of the whole line.
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const settle = () => new Promise((r) => setTimeout(r, 2000));

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

const TRUST = JSON.stringify({
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
});

async function developer(svc: BrokerService, idp: TestIdp): Promise<() => Promise<number>> {
  const login = await fetch(`${svc.url}/v1/auth/token`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id_token: await idp.loginAs('alice@example.com') }),
  });
  if (login.status !== 200) throw new Error(`login failed: ${await login.text()}`);
  const token = ((await login.json()) as { access_token: string }).access_token;
  const auth = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  const started = await fetch(`${svc.url}/v1/sessions`, { method: 'POST', headers: auth, body: JSON.stringify({ template: 'deploy-lambda', params: { function: 'checkout-api' }, reason: 'bench', agent: 'bench' }) });
  if (started.status !== 201) throw new Error(`task failed: ${await started.text()}`);
  const id = ((await started.json()) as { session: { id: string } }).session.id;
  return async () => {
    const t = performance.now();
    const r = await fetch(`${svc.url}/v1/sessions/${id}/credentials`, { method: 'POST', headers: auth });
    await r.arrayBuffer();
    if (r.status !== 200) throw new Error(`issuance answered ${r.status}`);
    return performance.now() - t;
  };
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const n = arg('--n', 100);
  const rounds = arg('--rounds', 5);
  const concurrent = arg('--concurrent', 8);
  const moto = await startMoto();
  const idp = await startIdp();
  const services: BrokerService[] = [];
  try {
    for (const role of TEST_ROLES) await createRole(moto.url, role, TRUST, 43200);
    const variants = [
      { name: 'no sink', sinks: [] as unknown[] },
      { name: 'jsonl (fsync)', sinks: [{ type: 'jsonl', path: 'audit.jsonl', fsync: true }] },
      { name: 'jsonl (no fsync)', sinks: [{ type: 'jsonl', path: 'audit.jsonl', fsync: false }] },
      // What the issue measures: signed checkpoints (every 100 records) and one JSON-lines sink on.
      { name: 'checkpoints + jsonl (fsync)', sinks: [{ type: 'jsonl', path: 'audit.jsonl', fsync: true }], checkpoints: true },
    ];
    interface Run { name: string; sinks: unknown[]; checkpoints?: boolean; svc: BrokerService; issue: () => Promise<number>; sequential: number[]; perSecond: number; cpuSeq: number; cpuConc: number }
    const runs: Run[] = [];
    for (const v of variants) {
      const svc = await startBrokerService({
        issuer: idp.issuer, stsEndpoint: moto.url, iamEndpoint: moto.url,
        extra: {
          aws: { region: 'us-east-1', stsEndpoint: moto.url, iamEndpoint: moto.url, checkTrustAtStartup: false },
          limits: { issuePerMinute: 1_000_000 }, log: { level: 'info' }, audit: { sinks: v.sinks, ...('checkpoints' in v ? { signingKeys: 'ephemeral' } : {}) },
        },
      });
      services.push(svc);
      const issue = await developer(svc, idp);
      for (let i = 0; i < 20; i++) await issue(); // warm-up
      runs.push({ ...v, svc, issue, sequential: [], perSecond: 0, cpuSeq: 0, cpuConc: 0 });
    }
    await settle();
    const cpu0 = runs.map((r) => cpuMs(r.svc.pid));
    // Each round in another order, so no variant always runs first (or right after another).
    const order = (r: number) => runs.map((_, k) => runs[(k + r) % runs.length]!);
    for (let r = 0; r < rounds; r++) {
      for (const run of order(r)) for (let i = 0; i < n; i++) run.sequential.push(await run.issue());
    }
    await settle();
    const cpu1 = runs.map((r) => cpuMs(r.svc.pid));
    const busyMs = runs.map(() => 0);
    for (let r = 0; r < rounds; r++) {
      for (const run of order(r)) {
        const k = runs.indexOf(run);
        const t = performance.now();
        let left = n;
        await Promise.all(Array.from({ length: concurrent }, async () => { while (left-- > 0) await run.issue(); }));
        busyMs[k]! += performance.now() - t;
      }
    }
    for (const [k, run] of runs.entries()) run.perSecond = (n * rounds) / (busyMs[k]! / 1000);
    // Let the sinks catch up, then check the file against the store.
    await settle();
    const cpu2 = runs.map((r) => cpuMs(r.svc.pid));
    for (const [k, run] of runs.entries()) {
      run.cpuSeq = (cpu1[k]! - cpu0[k]!) / (n * rounds);
      run.cpuConc = (cpu2[k]! - cpu1[k]!) / (n * rounds);
    }
    const results = [];
    for (const run of runs) {
      let exported: number | null = null;
      let stored = 0;
      const s = new SqliteStore(run.svc.dbPath);
      try { stored = (await s.auditLog.records(0, 10_000_000)).length; } finally { await s.close(); }
      if (run.sinks.length) exported = readFileSync(join(run.svc.dir, 'audit.jsonl'), 'utf8').split('\n').filter(Boolean).length;
      results.push({ variant: run.name, sequentialMs: stats(run.sequential), concurrentPerSecond: run.perSecond, serviceCpuMsPerIssuance: { sequential: run.cpuSeq, concurrent: run.cpuConc }, auditRecords: stored, exportedLines: exported });
    }
    const base = results[0]!;
    const withCost = results.map((r) => ({
      ...r,
      costMeanPercent: ((r.sequentialMs.mean / base.sequentialMs.mean) - 1) * 100,
      costP50Percent: ((r.sequentialMs.p50 / base.sequentialMs.p50) - 1) * 100,
      throughputLossPercent: (1 - r.concurrentPerSecond / base.concurrentPerSecond) * 100,
      cpuCostPercent: ((r.serviceCpuMsPerIssuance.sequential / base.serviceCpuMsPerIssuance.sequential) - 1) * 100,
      cpuCostConcurrentPercent: ((r.serviceCpuMsPerIssuance.concurrent / base.serviceCpuMsPerIssuance.concurrent) - 1) * 100,
    }));
    if (json) {
      console.log(JSON.stringify({ n, rounds, concurrent, results: withCost }, null, 2));
      return;
    }
    console.log(`credential issuances: ${rounds} rounds × ${n} sequential per service (interleaved), then ${rounds} rounds × ${n} with ${concurrent} concurrent clients`);
    for (const r of withCost) {
      const s = r.sequentialMs;
      const c = r.serviceCpuMsPerIssuance;
      console.log(`${r.variant.padEnd(17)} service CPU per issuance: ${c.sequential.toFixed(2)} ms sequential (${r.cpuCostPercent >= 0 ? '+' : ''}${r.cpuCostPercent.toFixed(1)}%), ${c.concurrent.toFixed(2)} ms concurrent (${r.cpuCostConcurrentPercent >= 0 ? '+' : ''}${r.cpuCostConcurrentPercent.toFixed(1)}%)`);
      console.log(`${''.padEnd(17)} p50 ${s.p50.toFixed(2)} ms  p95 ${s.p95.toFixed(2)} ms  mean ${s.mean.toFixed(2)} ms  (${r.costMeanPercent >= 0 ? '+' : ''}${r.costMeanPercent.toFixed(1)}% mean, ${r.costP50Percent >= 0 ? '+' : ''}${r.costP50Percent.toFixed(1)}% p50)  concurrent ${r.concurrentPerSecond.toFixed(0)}/s (${r.throughputLossPercent.toFixed(1)}% fewer)  audit ${r.auditRecords}${r.exportedLines === null ? '' : `, exported ${r.exportedLines}`}`);
    }
  } finally {
    for (const s of services) await s.stop();
    await idp.stop();
    await moto.stop();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
