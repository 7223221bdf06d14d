/**
 * The audit sinks (broker/sinks/, README "Export to a SIEM") with the real `broker server`, moto as
 * STS, the test IdP, and a real OpenTelemetry Collector (OTLP/HTTP receiver + file exporter, built
 * by scripts/setup.sh) as the OTLP receiver:
 * - JSON lines, OTLP and stdout each receive every record across a service killed in the middle of
 *   a burst: deduplicated by seq, no gap, and duplicates only between the cursor and the head at
 *   the kill;
 * - the JSON-lines file survives logrotate's copytruncate and rename;
 * - an OTLP receiver that hangs, then refuses, then comes up neither blocks nor fails issuance: its
 *   backlog and error show in admin status, and it gets everything once it is up;
 * - no secret (issued keys, tokens, the OTLP header) in any sink's output or the service log.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, renameSync, statSync, truncateSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseServerConfig } from '../broker/config/server-config.js';
import { isBrokerError } from '../broker/errors.js';
import type { AuditRecord } from '../broker/store/audit-event.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { apiCaller, startBrokerService, type BrokerService } from './peers/broker-service.js';
import { DEFAULT_USERS, startIdp, type TestIdp } from './peers/idp.js';
import { createRole, startMoto, type Moto } from './peers/moto.js';
import { readRecords, startCollector, type Collector } from './peers/otelcol.js';
import { filesContaining, filesWithTokensFrom } from './peers/secret-scan.js';
import { TEST_ROLES } from './peers/stack.js';

const TRUST = JSON.stringify({
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
});

const BASE_CONFIG = {
  listen: { host: '127.0.0.1', port: 0 },
  oidc: { issuer: 'https://idp.example.com', audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli' },
  tokens: { signingKeys: 'ephemeral' },
};

function configProblems(audit: unknown): { path: string; message: string }[] {
  try {
    parseServerConfig({ ...BASE_CONFIG, audit }, '/etc/broker', 'broker.yaml');
  } catch (e) {
    if (isBrokerError(e) && e.code === 'invalid_config') return (e.details ?? []) as { path: string; message: string }[];
    throw e;
  }
  return [];
}

describe('audit sink configuration', () => {
  it('accepts the three kinds, resolves a JSON-lines path against the config directory, and derives ids', () => {
    const c = parseServerConfig({
      ...BASE_CONFIG,
      audit: { sinks: [{ type: 'jsonl', path: 'audit/audit.jsonl' }, { type: 'stdout' }, { type: 'otlp', endpoint: 'https://otel.example.com:4318/v1/logs', headers: { Authorization: { env: 'OTLP_AUTH' } } }] },
    }, '/etc/broker');
    assert.deepEqual(c.audit.sinks.map((s) => s.id), ['jsonl:audit/audit.jsonl', 'stdout', 'otlp:https://otel.example.com:4318/v1/logs']);
    assert.equal(c.audit.sinks[0]!.type === 'jsonl' && c.audit.sinks[0]!.path, '/etc/broker/audit/audit.jsonl');
    assert.deepEqual(parseServerConfig(BASE_CONFIG, '/etc/broker').audit.sinks, []);
  });

  it('refuses a bad sink naming the field: unknown type, plain http off loopback, credentials in the URL, an inline header, a duplicate', () => {
    const one = (audit: unknown) => configProblems(audit).map((p) => `${p.path}: ${p.message}`);
    assert.match(one({ sinks: [{ type: 'syslog' }] }).join('\n'), /broker\.yaml:audit\.sinks\.0(\.type)?: must have type jsonl \(path\), stdout, or otlp \(endpoint\)/);
    assert.match(one({ sinks: [{ type: 'otlp', endpoint: 'http://otel.example.com:4318/v1/logs' }] }).join('\n'), /audit\.sinks\.0\.endpoint: must be https/);
    assert.match(one({ sinks: [{ type: 'otlp', endpoint: 'https://u:p@otel.example.com/v1/logs' }] }).join('\n'), /audit\.sinks\.0\.endpoint: must not hold credentials/);
    assert.match(one({ sinks: [{ type: 'otlp', endpoint: 'https://otel.example.com/v1/logs', headers: { Authorization: 'Bearer s3cr3t-inline' } }] }).join('\n'),
      /audit\.sinks\.0\.headers\.Authorization: must be \{env: NAME\} or \{file: path\}/);
    assert.match(one({ sinks: [{ type: 'jsonl', path: 'a.jsonl' }, { type: 'jsonl', path: 'a.jsonl' }] }).join('\n'), /audit\.sinks\.1: is the same sink as sinks\.0/);
    assert.match(one({ sinks: [{ type: 'jsonl' }] }).join('\n'), /audit\.sinks\.0\.path/);
  });
});

/** A loopback port nothing listens on (yet). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** A TCP server that accepts connections and never answers: an OTLP receiver that hangs. */
async function blackhole(port: number): Promise<{ close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const s: Server = createServer((c) => { sockets.add(c); c.on('error', () => undefined); c.on('close', () => sockets.delete(c)); });
  await new Promise<void>((r) => s.listen(port, '127.0.0.1', r));
  return { close: () => new Promise<void>((r) => { for (const c of sockets) c.destroy(); s.close(() => r()); }) };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

async function cursorsAndHead(dbPath: string, ids: string[]): Promise<{ head: number; cursors: Record<string, number> }> {
  const s = new SqliteStore(dbPath);
  try {
    const cursors: Record<string, number> = {};
    for (const id of ids) cursors[id] = (await s.sinkCursors.get(id)).deliveredSeq;
    return { head: await s.sinkCursors.head(), cursors };
  } finally {
    await s.close();
  }
}

async function allRecords(dbPath: string): Promise<AuditRecord[]> {
  const s = new SqliteStore(dbPath);
  try { return await s.auditLog.records(0, 1_000_000); } finally { await s.close(); }
}

/** JSON lines as written: every non-empty line must parse. */
function jsonLines(file: string): AuditRecord[] {
  return readFileSync(file, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as AuditRecord);
}

/** Audit records printed on the service's stdout (its log file also holds its pino lines, which have a level). */
function stdoutRecords(logText: string): AuditRecord[] {
  return logText.split('\n').flatMap((l) => {
    if (!l.startsWith('{')) return [];
    try {
      const o = JSON.parse(l) as Record<string, unknown>;
      return typeof o.seq === 'number' && typeof o.hash === 'string' && !('level' in o) ? [o as unknown as AuditRecord] : [];
    } catch { return []; }
  });
}

/**
 * What a receiver deduplicating by seq holds is exactly the store's log: every record once, equal
 * to the store's, none missing; and a record came twice only if it was after the sink's cursor and
 * at most the head when the service was killed (the batch in flight).
 */
function assertExactlyOnceAfterDedup(name: string, got: AuditRecord[], store: AuditRecord[], redeliverable: { after: number; upTo: number }): void {
  const bySeq = new Map<number, AuditRecord>();
  const dups: number[] = [];
  for (const r of got) {
    if (bySeq.has(r.seq)) {
      dups.push(r.seq);
      assert.deepEqual(r, bySeq.get(r.seq), `${name}: a repeated seq ${r.seq} is the same record`);
    }
    bySeq.set(r.seq, r);
  }
  const missing = store.filter((r) => !bySeq.has(r.seq)).map((r) => r.seq);
  assert.deepEqual(missing, [], `${name}: no gap`);
  assert.equal(bySeq.size, store.length, `${name}: nothing the store does not hold`);
  for (const r of store) assert.deepEqual(bySeq.get(r.seq), JSON.parse(JSON.stringify(r)), `${name}: seq ${r.seq} as stored`);
  const stray = dups.filter((s) => s <= redeliverable.after || s > redeliverable.upTo);
  assert.deepEqual(stray, [], `${name}: duplicates only around the restart (cursor ${redeliverable.after}, head ${redeliverable.upTo}); got ${dups.join(',')}`);
}

/** OTLP log records → the audit records in their bodies, with the seq attribute checked against the body. */
function otlpAuditRecords(file: string): AuditRecord[] {
  return readRecords(file).map((l) => {
    const body = l.body as AuditRecord;
    assert.equal(l.attributes['broker.audit.seq'], body.seq, 'the seq attribute is the record\'s');
    return body;
  });
}

describe('audit sinks: JSON lines, stdout and OTLP fed from the store (real broker server, OpenTelemetry Collector)', () => {
  let moto: Moto;
  let idp: TestIdp;
  let collector: Collector;
  let dir: string;
  const services: BrokerService[] = [];
  const secrets: string[] = [];
  const OTLP_HEADER_SECRET = `otlp-api-key-${Math.random().toString(36).slice(2)}${Date.now()}`;

  const limits = { issuePerMinute: 100_000, maxActiveSessions: 10_000, auth: { perAddress: { burst: 10_000, perMinute: 100_000 }, global: { burst: 10_000, perMinute: 100_000 } } };
  // One developer per start: a developer holds one session of a template at a time.
  let developers = 0;
  const start = async (svc: BrokerService) => {
    const call = apiCaller(svc, idp);
    return async (fn: string) => {
      const who = `dev${developers++}@example.com`;
      const r = await call('POST', '/v1/sessions', who, { template: 'deploy-lambda', params: { function: fn }, reason: `work on ${fn}`, agent: 'claude-code' });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      secrets.push(r.body.credentials.SecretAccessKey, r.body.credentials.SessionToken);
      return r.body as { credentials: { AccessKeyId: string } };
    };
  };
  const admins = new Map<BrokerService, ReturnType<typeof apiCaller>>();
  const status = async (svc: BrokerService) => {
    if (!admins.has(svc)) admins.set(svc, apiCaller(svc, idp));
    const r = await admins.get(svc)!('GET', '/v1/admin/status', 'carol@example.com');
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body.auditSinks as { id: string; type: string; deliveredSeq: number; backlog: number; lastError?: string; lastDeliveredAt?: string }[];
  };
  const drained = (svc: BrokerService) => until('every sink to catch up', async () => {
    const s = await status(svc);
    return s.every((x) => x.backlog === 0) ? s : undefined;
  });
  const service = async (extra: Record<string, unknown>) => {
    const svc = await startBrokerService({
      issuer: idp.issuer, stsEndpoint: moto.url, iamEndpoint: moto.url,
      env: { OTLP_TOKEN: OTLP_HEADER_SECRET },
      extra: { aws: { region: 'us-east-1', stsEndpoint: moto.url, iamEndpoint: moto.url, checkTrustAtStartup: false }, limits, admins: { groups: ['admins'] }, ...extra },
    });
    services.push(svc);
    return svc;
  };

  before(async () => {
    moto = await startMoto();
    idp = await startIdp({ users: [...DEFAULT_USERS, ...Array.from({ length: 80 }, (_, i) => ({ email: `dev${i}@example.com`, name: `Dev ${i}`, groups: ['developers'] }))] });
    for (const role of TEST_ROLES) await createRole(moto.url, role, TRUST, 43200);
    collector = await startCollector({ port: await freePort() });
    dir = mkdtempSync(join(tmpdir(), 'broker-sinks-'));
  });

  after(async () => {
    for (const s of services) await s.stop();
    await collector?.stop();
    await idp?.stop();
    await moto?.stop();
  });

  const dbPath = () => join(dir, 'broker.db');
  const jsonl = () => join(dir, 'audit.jsonl');
  const sinksA = () => ({
    store: { sqlite: dbPath() },
    audit: {
      sinks: [
        { type: 'jsonl', path: jsonl() },
        { type: 'otlp', endpoint: collector.logsUrl, headers: { Authorization: { env: 'OTLP_TOKEN' } }, timeoutMs: 5000, batchSize: 7 },
        { type: 'stdout', batchSize: 3 },
      ],
    },
  });
  let svcA: BrokerService;

  it('JSON lines, OTLP and stdout get every record exactly once (deduplicated by seq) across a service killed in the middle of a burst', async () => {
    const first = await service(sinksA());
    const startFirst = await start(first);
    const BURST = 40;
    const KILL_AFTER = 15;
    let next = 0;
    let ok = 0;
    let killed = false;
    const worker = async () => {
      while (next < BURST && !killed) {
        const i = next++;
        try {
          await startFirst(`burst-${i}`);
          ok += 1;
          if (ok === KILL_AFTER && !killed) { killed = true; first.signal('SIGKILL'); }
        } catch {
          // Refused or cut off by the kill: not counted, so the burst is completed after the restart.
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    await first.stop();
    assert.ok(killed, 'the service was killed mid-burst');
    const ids = [`jsonl:${jsonl()}`, `otlp:${collector.logsUrl}`, 'stdout'];
    const atKill = await cursorsAndHead(dbPath(), ids);

    svcA = await service(sinksA());
    const startAgain = await start(svcA);
    const startedBefore = ok;
    for (let i = startedBefore; i < BURST; i++) await startAgain(`burst-after-${i}`);
    const st = await drained(svcA);
    assert.deepEqual(st.map((s) => s.type).sort(), ['jsonl', 'otlp', 'stdout']);
    for (const s of st) assert.ok(s.lastDeliveredAt && s.deliveredSeq > atKill.head, `${s.id} delivered after the restart`);

    const store = await allRecords(dbPath());
    assert.ok(store.filter((r) => r.event === 'credentials.issue' || r.event === 'session.start').length >= BURST, 'the whole burst was audited');
    assertExactlyOnceAfterDedup('jsonl', jsonLines(jsonl()), store, { after: atKill.cursors[ids[0]!]!, upTo: atKill.head });
    await until('the collector to write every record', () => (new Set(otlpAuditRecords(collector.outFile).map((r) => r.seq)).size >= store.length ? true : undefined), 30_000);
    assertExactlyOnceAfterDedup('otlp', otlpAuditRecords(collector.outFile), store, { after: atKill.cursors[ids[1]!]!, upTo: atKill.head });
    assertExactlyOnceAfterDedup('stdout', [...stdoutRecords(first.log()), ...stdoutRecords(svcA.log())], store, { after: atKill.cursors[ids[2]!]!, upTo: atKill.head });

    // The OTLP log data model: time, severity, event name, the person under semconv's user.id, the service.
    const otlp = readRecords(collector.outFile).find((l) => l.eventName === 'session.start')!;
    assert.ok(otlp, 'session.start arrived as an OTLP log record with its EventName');
    assert.match(String(otlp.attributes['user.id']), /^dev\d+@example\.com$/);
    assert.equal(otlp.attributes['broker.template'], 'deploy-lambda');
    assert.equal(otlp.severityText, 'INFO');
    assert.equal(otlp.resource['service.name'], 'agent-credential-broker');
    const body = otlp.body as AuditRecord;
    assert.equal(BigInt(otlp.timeUnixNano), BigInt(Date.parse(body.at)) * 1_000_000n, 'Timestamp is the record\'s time');
    const issued = readRecords(collector.outFile).find((l) => l.eventName === 'credentials.issue')!;
    assert.match(String(issued.attributes['broker.aws.access_key_id']), /^[A-Z0-9]{16,}$/);
  });

  it('the JSON-lines file survives logrotate copytruncate (appends at the new end) and rename (a new file at the path)', async () => {
    const startMore = await start(svcA);
    await drained(svcA);
    // copytruncate: the content is copied away and the file truncated in place.
    const before = jsonLines(jsonl());
    const headBefore = Math.max(...before.map((r) => r.seq));
    copyFileSync(jsonl(), `${jsonl()}.1`);
    truncateSync(jsonl(), 0);
    for (let i = 0; i < 3; i++) await startMore(`after-truncate-${i}`);
    await drained(svcA);
    const raw = readFileSync(jsonl());
    assert.notEqual(raw[0], 0, 'no hole of NUL bytes where the old content was');
    const afterTruncate = jsonLines(jsonl());
    assert.ok(afterTruncate.length > 0 && afterTruncate.every((r) => r.seq > headBefore), 'only the new records, from the start of the file');

    // rename (logrotate's default, create): the file is moved away; the sink writes a new one at the path.
    const headMid = Math.max(...afterTruncate.map((r) => r.seq));
    renameSync(jsonl(), `${jsonl()}.2`);
    for (let i = 0; i < 3; i++) await startMore(`after-rename-${i}`);
    await drained(svcA);
    assert.ok(existsSync(jsonl()), 'a new file at the path');
    assert.equal(statSync(jsonl()).mode & 0o777, 0o600, 'created private');
    assert.deepEqual(jsonLines(`${jsonl()}.2`).map((r) => r.seq), afterTruncate.map((r) => r.seq), 'nothing more went to the renamed file');
    const afterRename = jsonLines(jsonl());
    assert.ok(afterRename.length > 0 && afterRename.every((r) => r.seq > headMid));

    const store = await allRecords(dbPath());
    const everything = [...jsonLines(`${jsonl()}.1`), ...afterTruncate, ...afterRename];
    assertExactlyOnceAfterDedup('jsonl across rotations', everything, store, { after: 0, upTo: Number.MAX_SAFE_INTEGER });
  });

  it('an OTLP receiver that hangs, then refuses, then comes up blocks no issuance; its backlog shows in admin status and it gets everything later', async () => {
    const port = await freePort();
    const hang = await blackhole(port);
    const endpoint = `http://127.0.0.1:${port}/v1/logs`;
    const ownDb = join(dir, 'down.db');
    const ownJsonl = join(dir, 'down.jsonl');
    const SINK_TIMEOUT_MS = 30_000;
    const svc = await service({
      store: { sqlite: ownDb },
      audit: { sinks: [{ type: 'otlp', id: 'siem', endpoint, timeoutMs: SINK_TIMEOUT_MS, headers: { 'X-Api-Key': { env: 'OTLP_TOKEN' } } }, { type: 'jsonl', path: ownJsonl }] },
    });
    const startHere = await start(svc);
    const t0 = Date.now();
    for (let i = 0; i < 5; i++) await startHere(`while-hung-${i}`);
    const took = Date.now() - t0;
    // An issuance waiting on the sink would wait for its timeout at least once.
    assert.ok(took < SINK_TIMEOUT_MS, `5 starts took ${took} ms while the receiver hung`);
    const hung = await until('the JSON-lines sink to catch up while OTLP hangs', async () => {
      const s = await status(svc);
      return s.find((x) => x.id !== 'siem')!.backlog === 0 ? s : undefined;
    });
    const siem = hung.find((x) => x.id === 'siem')!;
    assert.equal(siem.type, 'otlp');
    assert.ok(siem.backlog >= 10, `the OTLP backlog shows (${siem.backlog})`);
    // The same backlog in the metrics (GET /metrics on the API port, for admins).
    const token = await fetch(`${svc.url}/v1/auth/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id_token: await idp.loginAs('carol@example.com') }) })
      .then(async (r) => ((await r.json()) as { access_token: string }).access_token);
    const scrape = await (await fetch(`${svc.url}/metrics`, { headers: { authorization: `Bearer ${token}` } })).text();
    const gauge = /^broker_audit_sink_backlog_records\{sink="siem"\} (\d+)$/m.exec(scrape);
    assert.ok(gauge && Number(gauge[1]) > 0, `broker_audit_sink_backlog_records for siem:\n${scrape.split('\n').filter((l) => l.includes('sink')).join('\n')}`);

    // Refusing: the error shows, without the header's value.
    await hang.close();
    const refused = await until('the OTLP failure to show', async () => (await status(svc)).find((x) => x.id === 'siem' && x.lastError));
    assert.ok(refused.backlog > 0);
    assert.ok(!refused.lastError!.includes(OTLP_HEADER_SECRET));
    for (let i = 0; i < 3; i++) await startHere(`while-down-${i}`);

    const late = await startCollector({ port });
    try {
      await until('the OTLP sink to deliver once its receiver is up', async () => {
        const s = (await status(svc)).find((x) => x.id === 'siem')!;
        return s.backlog === 0 && !s.lastError ? s : undefined;
      }, 90_000);
      await until('the collector to write', () => (readRecords(late.outFile).length > 0 ? true : undefined), 30_000);
      const store = await allRecords(ownDb);
      await until('every record at the collector', () => (new Set(otlpAuditRecords(late.outFile).map((r) => r.seq)).size >= store.length ? true : undefined), 30_000);
      assertExactlyOnceAfterDedup('otlp after the outage', otlpAuditRecords(late.outFile), store, { after: 0, upTo: Number.MAX_SAFE_INTEGER });
      assert.match(svc.log(), /audit sink delivery failed; retrying/, 'the failure is in the service log');
    } finally {
      await late.stop();
    }
  });

  it('refuses to start, naming the field, on an OTLP header whose variable is unset or a JSON-lines file in a missing directory', async () => {
    await assert.rejects(service({ store: { sqlite: join(dir, 'refused.db') }, audit: { sinks: [{ type: 'otlp', endpoint: collector.logsUrl, headers: { Authorization: { env: 'OTLP_NOT_SET_ANYWHERE' } } }] } }),
      /audit\.sinks\.0\.headers\.Authorization: environment variable OTLP_NOT_SET_ANYWHERE is not set/);
    await assert.rejects(service({ store: { sqlite: join(dir, 'refused.db') }, audit: { sinks: [{ type: 'stdout' }, { type: 'jsonl', path: join(dir, 'no-such-dir', 'audit.jsonl') }] } }),
      /audit\.sinks\.1\.path: the directory .*no-such-dir does not exist/);
  });

  it('no secret in any sink output or the service log: issued keys, broker and IdP tokens, the OTLP header value', async () => {
    assert.ok(secrets.length >= 80, `${secrets.length} secrets issued in this file`);
    const roots = [dir, collector.outFile, ...services.map((s) => s.dir)];
    assert.deepEqual(filesContaining(roots, [...secrets, OTLP_HEADER_SECRET]), []);
    for (const s of services) assert.deepEqual(filesWithTokensFrom(roots, s.url), [], `no token of ${s.url}`);
    assert.deepEqual(filesWithTokensFrom(roots, idp.issuer), []);
  });
});
