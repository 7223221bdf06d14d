/**
 * bench/auth-flood: what an anonymous flood of /v1/auth/* costs a developer who is working. A script,
 * not a test: it prints figures.
 *
 * It starts the local peers (moto as STS, the test IdP) and a real `broker server` on SQLite, logs a
 * developer in, starts a deploy-lambda task, then measures the developer's credential re-issues
 * (`POST /v1/sessions/:id/credentials`, sequential, p50/p95):
 *   1. alone (200 of them);
 *   2. for as long as 2,000 unauthenticated requests (bad ID tokens signed by an unknown key, bad refresh
 *      tokens, malformed and schema-invalid bodies) are sent from loopback in at most 10 s, from a
 *      worker thread (its own event loop, so the flood's client does not stall the developer's);
 * and reports how the flood was answered, how many audit rows it added, and how many server-log lines.
 * The same again against a service whose /v1/auth/* buckets are opened wide, so that every flood
 * request reaches the handlers (signature checks, the aggregate audit).
 *
 * With `--broker-bin PATH` (the bin/broker.cjs of another checkout, built), the same flood against
 * that broker instead, e.g. one from before these defences, for comparison.
 *
 *   bench/auth-flood [--json] [--requests N] [--seconds S] [--reissues N] [--broker-bin PATH]
 */
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { startBrokerService, type BrokerService } from '../test/peers/broker-service.js';
import { startIdp, type TestIdp } from '../test/peers/idp.js';
import { createRole, startMoto } from '../test/peers/moto.js';
import { TEST_ROLES } from '../test/peers/stack.js';
import { forgeIdToken } from '../test/peers/tokens.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';

interface Stats { p50: number; p95: number; max: number; n: number }

function stats(ms: number[]): Stats {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
  return { p50: q(0.5), p95: q(0.95), max: s.at(-1) ?? 0, n: s.length };
}

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

const TRUST = JSON.stringify({
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
});

/** The flood, in a worker: `requests` requests paced evenly over `seconds`, at most 64 in flight. */
const FLOOD_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { url, bodies, requests, seconds } = workerData;
const statuses = {};
let sent = 0, inFlight = 0, done = 0;
const t0 = performance.now();
function one(i) {
  const b = bodies[i % bodies.length];
  inFlight++;
  fetch(url + b.path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: b.body })
    .then(async (r) => { await r.arrayBuffer(); statuses[r.status] = (statuses[r.status] || 0) + 1; },
          () => { statuses.error = (statuses.error || 0) + 1; })
    .finally(() => { inFlight--; done++; if (done === requests) parentPort.postMessage({ statuses, ms: performance.now() - t0 }); else pump(); });
}
function pump() {
  const due = Math.min(requests, Math.ceil(((performance.now() - t0) / (seconds * 1000)) * requests) + 1);
  while (sent < due && inFlight < 64) one(sent++);
  if (sent < requests && inFlight < 64) setTimeout(pump, 2);
}
const timer = setInterval(() => { if (sent >= requests) clearInterval(timer); else pump(); }, 4);
pump();
`;

interface Flood { statuses: Record<string, number>; ms: number }

function flood(url: string, bodies: { path: string; body: string }[], requests: number, seconds: number): Promise<Flood> {
  return new Promise((resolve, reject) => {
    const w = new Worker(FLOOD_WORKER, { eval: true, workerData: { url, bodies, requests, seconds } });
    w.once('message', (m: Flood) => { void w.terminate(); resolve(m); });
    w.once('error', reject);
  });
}

async function developer(svc: BrokerService, idp: TestIdp): Promise<{ reissue: () => Promise<number> }> {
  const login = await fetch(`${svc.url}/v1/auth/token`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id_token: await idp.loginAs('alice@example.com') }),
  });
  if (login.status !== 200) throw new Error(`login failed: ${await login.text()}`);
  const token = ((await login.json()) as { access_token: string }).access_token;
  const auth = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  const started = await fetch(`${svc.url}/v1/sessions`, { method: 'POST', headers: auth, body: JSON.stringify({ template: 'deploy-lambda', params: { function: 'checkout-api' } }) });
  if (started.status !== 201) throw new Error(`task failed: ${await started.text()}`);
  const id = ((await started.json()) as { session: { id: string } }).session.id;
  return {
    reissue: async () => {
      const t = performance.now();
      const r = await fetch(`${svc.url}/v1/sessions/${id}/credentials`, { method: 'POST', headers: auth });
      await r.arrayBuffer();
      if (r.status !== 200) throw new Error(`re-issue answered ${r.status}`);
      return performance.now() - t;
    },
  };
}

/** Audit rows other than the developer's own re-issues, and the denials of /v1/auth/* among them. */
async function auditCounts(dbPath: string): Promise<{ rows: number; denied: number }> {
  const store = new SqliteStore(dbPath);
  try {
    const all = (await store.auditLog.records(0, 10_000_000)).filter((r) => r.event !== 'credentials.reissue');
    return { rows: all.length, denied: all.filter((r) => r.decision === 'denied' && ['login', 'token.refresh', 'login.revoke'].includes(r.event)).length };
  } finally {
    await store.close();
  }
}

async function scenario(label: string, o: { svc: BrokerService; idp: TestIdp; bodies: { path: string; body: string }[]; requests: number; seconds: number; reissues: number }) {
  const dev = await developer(o.svc, o.idp);
  for (let i = 0; i < 10; i++) await dev.reissue(); // warm-up
  const alone: number[] = [];
  for (let i = 0; i < o.reissues; i++) alone.push(await dev.reissue());
  const before = await auditCounts(o.svc.dbPath);
  const logBefore = o.svc.log().split('\n').filter((l) => l.includes('"auth request refused"')).length;
  const during: number[] = [];
  let flooding = true;
  const f = flood(o.svc.url, o.bodies, o.requests, o.seconds).finally(() => { flooding = false; });
  // The developer works as long as the flood lasts; only re-issues started during it count.
  while (flooding) {
    const ms = await dev.reissue();
    if (flooding) during.push(ms);
  }
  const result = await f;
  // The service writes the counts still pending when it stops (or when a window ends).
  await o.svc.stop();
  const after = await auditCounts(o.svc.dbPath);
  const logLines = readFileSync(o.svc.logFile, 'utf8').split('\n').filter((l) => l.includes('"auth request refused"')).length - logBefore;
  if (during.length === 0) throw new Error('the flood ended before one re-issue did: give it more --seconds');
  return {
    label, alone: stats(alone), during: stats(during), flood: { requests: o.requests, seconds: result.ms / 1000, statuses: result.statuses },
    auditRowsAdded: after.rows - before.rows, deniedRowsAdded: after.denied - before.denied, serverLogLines: logLines,
  };
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const requests = arg('--requests', 2000);
  const seconds = arg('--seconds', 8);
  const reissues = arg('--reissues', 200);
  const moto = await startMoto();
  const idp = await startIdp();
  for (const role of TEST_ROLES) await createRole(moto.url, role, TRUST, 43200);
  const base = { issuer: idp.issuer, stsEndpoint: moto.url, iamEndpoint: moto.url };
  const aws = { region: 'us-east-1', stsEndpoint: moto.url, iamEndpoint: moto.url, checkTrustAtStartup: false };
  // What an anonymous client can send: ID tokens signed by a key the IdP never published, refresh
  // tokens that are not ours, bodies that are not JSON or not the schema.
  const forged = await Promise.all(Array.from({ length: 8 }, () => forgeIdToken({ issuer: idp.issuer, audience: 'broker-cli', email: 'mallory@example.com' })));
  const bodies = [
    ...forged.map((t) => ({ path: '/v1/auth/token', body: JSON.stringify({ id_token: t }) })),
    { path: '/v1/auth/refresh', body: JSON.stringify({ refresh_token: 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln' }) },
    { path: '/v1/auth/refresh', body: '{not json' },
    { path: '/v1/auth/token', body: JSON.stringify({ id_token: 42 }) },
    { path: '/v1/auth/logout', body: JSON.stringify({ refresh_token: 'x', extra: true }) },
  ];
  const results = [];
  const i = process.argv.indexOf('--broker-bin');
  const otherBin = i > 0 ? process.argv[i + 1] : undefined;
  const runs: [string, Record<string, unknown>][] = otherBin
    ? [[`the broker at ${otherBin}`, {}]]
    : [
      ['default /v1/auth/* buckets', {}],
      ['buckets opened wide (every request reaches the handlers)', { auth: { perAddress: { burst: 100_000, perMinute: 1_000_000 }, global: { burst: 100_000, perMinute: 1_000_000 } } }],
    ];
  try {
    for (const [label, limits] of runs) {
      const svc = await startBrokerService({
        ...base, ...(otherBin ? { bin: otherBin } : {}), extra: { aws, log: { level: 'info' }, limits: { issuePerMinute: 100_000, ...limits } },
      });
      results.push(await scenario(label, { svc, idp, bodies, requests, seconds, reissues }));
    }
  } finally {
    await idp.stop();
    await moto.stop();
  }
  const out = { node: process.version, cpus: (await import('node:os')).cpus().length, results };
  if (json) {
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return;
  }
  const f = (s: Stats) => `p50 ${s.p50.toFixed(1).padStart(6)} ms   p95 ${s.p95.toFixed(1).padStart(6)} ms   (n=${s.n})`;
  const lines = [`node ${out.node}, ${out.cpus} CPUs`];
  for (const r of results) {
    lines.push(
      `${r.label}:`,
      `  re-issues alone            ${f(r.alone)}`,
      `  re-issues during the flood ${f(r.during)}`,
      `  flood: ${r.flood.requests} requests in ${r.flood.seconds.toFixed(1)} s, answered ${Object.entries(r.flood.statuses).map(([k, v]) => `${k}: ${v}`).join(', ')}`,
      `  audit rows the flood added: ${r.auditRowsAdded} (${r.deniedRowsAdded} of them denials of /v1/auth/*); "auth request refused" server-log lines: ${r.serverLogLines}`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

await main();
