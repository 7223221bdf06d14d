/**
 * `/metrics` (README, "Metrics"), with the service in-process over real HTTP, the real IdP for
 * every login and moto behind a recording proxy as STS and IAM: after real issuances, denials and
 * rate-limit refusals, the exposition scraped over HTTP and parsed as the Prometheus text format
 * has moved each counter by exactly what was done, with the right labels; STS and IAM calls and
 * audit writes are in their histograms; the metrics listener serves /metrics and nothing else; the
 * main port's /metrics is for administrators only; no email, session id, access key or secret
 * reaches the exposition; and two services in one process keep separate counts.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, describe, it } from 'node:test';
import { parseServerConfig, type ServerConfig } from '../broker/config/server-config.js';
import { createLogger } from '../broker/log.js';
import { ServiceMetrics } from '../broker/metrics/service-metrics.js';
import { startServer, type RunningServer } from '../broker/server/start.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { DEFAULT_USERS, startIdp } from './peers/idp.js';
import { createRole, startMoto } from './peers/moto.js';
import { POLICIES_DIR } from './peers/paths.js';
import { assumeRoleCalls, issuedSecrets, startRecordingProxy } from './peers/recording-proxy.js';
import { filesContaining } from './peers/secret-scan.js';
import { TEST_ROLES } from './peers/stack.js';

const TRUST = JSON.stringify({
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
});

/** A template of its own with a limit, so a template-limit refusal can be made. */
const LIMITED = `name: limited-logs
description: Read one log group, one open session at a time
allowed:
  groups: [developers]
session:
  maxDuration: 1h
  credentialLifetime: 15m
limits:
  concurrentSessions: 1
aws:
  roleArn: arn:aws:iam::123456789012:role/broker-read-cloudwatch-logs
  region: eu-west-1
  policy:
    Version: '2012-10-17'
    Statement:
      - Effect: Allow
        Action: [logs:GetLogEvents]
        Resource: '*'
`;

interface Sample { name: string; labels: Record<string, string>; value: number }
interface Exposition { types: Map<string, string>; helps: Map<string, string>; samples: Sample[] }

/**
 * The Prometheus text exposition format, version 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/):
 * `# HELP name text`, `# TYPE name type`, and `name{label="value",…} value` lines, label values
 * escaped with \\, \" and \n. Any other line fails the parse.
 */
function parseExposition(text: string): Exposition {
  const types = new Map<string, string>();
  const helps = new Map<string, string>();
  const samples: Sample[] = [];
  const unescape = (v: string) => v.replace(/\\(["\\n])/g, (_, c: string) => (c === 'n' ? '\n' : c));
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) {
      (m[1] === 'HELP' ? helps : types).set(m[2]!, m[3]!);
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([^ ]+)$/.exec(line);
    assert.ok(m, `not an exposition line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const body = m[2] ?? '';
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/gy;
    let l: RegExpExecArray | null;
    let consumed = 0;
    while (consumed < body.length && (l = re.exec(body)) !== null) {
      labels[l[1]!] = unescape(l[2]!);
      consumed = re.lastIndex;
    }
    assert.equal(consumed, body.length, `bad labels in ${JSON.stringify(line)}`);
    // Prometheus reads values with Go's strconv.ParseFloat: NaN and Inf in any case (prom-client writes `Nan`).
    const raw = m[3]!;
    const value = /^\+?inf$/i.test(raw) ? Infinity : /^-inf$/i.test(raw) ? -Infinity : /^nan$/i.test(raw) ? NaN : Number(raw);
    assert.ok(!Number.isNaN(value) || /^nan$/i.test(raw), `bad value in ${JSON.stringify(line)}`);
    samples.push({ name: m[1]!, labels, value });
  }
  return { types, helps, samples };
}

/** The sum of the samples named `name` whose labels include `labels` (0 when none). */
function total(x: Exposition, name: string, labels: Record<string, string> = {}): number {
  return x.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);
}

describe('metrics (/metrics, Prometheus text format)', () => {
  let moto: Awaited<ReturnType<typeof startMoto>>;
  let proxy: Awaited<ReturnType<typeof startRecordingProxy>>;
  let idp: Awaited<ReturnType<typeof startIdp>>;
  let server: RunningServer;
  let config: ServerConfig;
  let dir: string;
  const tokens: Record<string, string> = {};
  const sessionIds: string[] = [];

  const call = async (method: string, path: string, who?: string, body?: unknown) => {
    const res = await fetch(`${server.url}${path}`, {
      method,
      headers: { 'content-type': 'application/json', ...(who ? { authorization: `Bearer ${tokens[who]}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, text: await res.text(), headers: res.headers };
  };
  const scrape = async (base = server.metricsUrl!): Promise<{ text: string; x: Exposition }> => {
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    return { text, x: parseExposition(text) };
  };
  const login = async (who: string) => {
    const r = await fetch(`${server.url}/v1/auth/token`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id_token: await idp.loginAs(`${who}@example.com`) }),
    });
    assert.equal(r.status, 200, await r.clone().text());
    tokens[who] = ((await r.json()) as { access_token: string }).access_token;
  };

  before(async () => {
    moto = await startMoto();
    proxy = await startRecordingProxy(moto.url);
    idp = await startIdp({ users: [...DEFAULT_USERS] });
    for (const role of TEST_ROLES) await createRole(moto.url, role, TRUST, 43200);
    process.env.AWS_ACCESS_KEY_ID = 'testing';
    process.env.AWS_SECRET_ACCESS_KEY = 'testing';
    dir = mkdtempSync(join(tmpdir(), 'broker-metrics-'));
    const policies = join(dir, 'policies');
    cpSync(POLICIES_DIR, policies, { recursive: true });
    writeFileSync(join(policies, 'limited-logs.yaml'), LIMITED);
    config = parseServerConfig({
      listen: { host: '127.0.0.1', port: 0 }, policiesDir: policies, policiesWatch: false, store: { sqlite: join(dir, 'broker.db') },
      oidc: { issuer: idp.issuer, audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli', allowInsecureHttp: true },
      tokens: { signingKeys: 'ephemeral' },
      // IAM through the proxy too: its answers are part of what the exposition must not hold.
      aws: { region: 'us-east-1', stsEndpoint: proxy.url, iamEndpoint: proxy.url, checkTrustAtStartup: false },
      limits: { issuePerMinute: 3, auth: { perAddress: { burst: 8, perMinute: 1 } } },
      confirm: { default: 'none' },
      admins: { groups: ['admins'] },
      metrics: { listen: { port: 0 } },
    }, dir);
    server = await startServer(config, { log: createLogger({ level: 'silent' }) });
    for (const who of ['alice', 'bob', 'carol']) await login(who);
  });
  after(async () => {
    await server?.stop();
    await idp?.stop();
    await proxy?.stop();
    await moto?.stop();
  });

  it('the config: a metrics listener on loopback unless a host is given, and never on the API port', () => {
    const base = { oidc: { issuer: 'https://idp.example.com', audience: 'a', algorithms: ['RS256'], cliClientId: 'c' }, tokens: { signingKeys: 'ephemeral' } };
    const none = parseServerConfig(base, '/tmp');
    assert.equal(none.metrics.listen, undefined);
    assert.equal(none.metrics.adminRoute, true);
    assert.deepEqual(parseServerConfig({ ...base, metrics: { listen: { port: 9464 } } }, '/tmp').metrics.listen, { host: '127.0.0.1', port: 9464 });
    assert.throws(() => parseServerConfig({ ...base, metrics: { listen: { port: 8787 } } }, '/tmp'),
      (e: any) => e.code === 'invalid_config' && e.details.some((d: any) => d.path === 'config:metrics.listen.port' && /port the API listens on/.test(d.message)));
    assert.throws(() => parseServerConfig({ ...base, metrics: { listen: { host: '127.0.0.1' } } }, '/tmp'),
      (e: any) => e.code === 'invalid_config' && e.details.some((d: any) => d.path === 'config:metrics.listen.port'));
    assert.throws(() => parseServerConfig({ ...base, metrics: { lisen: {} } }, '/tmp'), (e: any) => e.code === 'invalid_config');
  });

  it('counters move by what was done, with the right labels; STS, IAM and audit writes are in their histograms; no identity or secret in it', async () => {
    const before = (await scrape()).x;
    const assumeRolesBefore = assumeRoleCalls(proxy.requests).length;

    // Issuances: alice starts deploy-lambda and re-issues once (issuePerMinute 3: the third is her limited start).
    const start = await call('POST', '/v1/sessions', 'alice', { template: 'deploy-lambda', params: { function: 'checkout-api' }, reason: 'ship checkout', agent: 'claude-code' });
    assert.equal(start.status, 201, start.text);
    const session = JSON.parse(start.text).session.id as string;
    sessionIds.push(session);
    const re = await call('POST', `/v1/sessions/${session}/credentials`, 'alice');
    assert.equal(re.status, 200, re.text);
    const limited = await call('POST', '/v1/sessions', 'alice', { template: 'limited-logs', params: {}, reason: 'read logs', agent: 'claude-code' });
    assert.equal(limited.status, 201, limited.text);
    sessionIds.push(JSON.parse(limited.text).session.id as string);
    // Her fourth credential request in the minute: refused by issuePerMinute (not audited: no denial).
    const fourth = await call('POST', `/v1/sessions/${session}/credentials`, 'alice');
    assert.equal(fourth.status, 429, fourth.text);

    // Denials: bob may not start deploy-lambda (forbidden); nobody can start a template that does not
    // exist (not_found, whatever its name: the name is no label); carol is refused by limited-logs'
    // concurrentSessions limit (conflict, and a template-limit refusal).
    assert.equal((await call('POST', '/v1/sessions', 'bob', { template: 'deploy-lambda', params: { function: 'f' }, reason: 'r', agent: 'a' })).status, 403);
    assert.equal((await call('POST', '/v1/sessions', 'bob', { template: 'no-such-template-zq', params: {}, reason: 'r', agent: 'a' })).status, 404);
    const carol = await call('POST', '/v1/sessions', 'carol', { template: 'limited-logs', params: {}, reason: 'read logs too', agent: 'codex' });
    assert.equal(carol.status, 409, carol.text);

    // The auth buckets (burst 8 per address; 3 logins taken): bad ID tokens are refused (401,
    // audited) until the bucket is empty, then 429. Counted as they come back.
    let unauthenticated = 0;
    let limitedAuth = 0;
    for (let i = 0; i < 8; i++) {
      const r = await fetch(`${server.url}/v1/auth/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id_token: 'eyJhbGciOiJSUzI1NiJ9.e30.c2ln' }) });
      await r.text();
      if (r.status === 401) unauthenticated++;
      else if (r.status === 429) limitedAuth++;
      else assert.fail(`unexpected ${r.status}`);
    }
    assert.ok(unauthenticated >= 1 && limitedAuth >= 1, `${unauthenticated} refused, ${limitedAuth} rate limited`);

    // An end: its role's deny document is written to IAM in the background.
    assert.equal((await call('DELETE', `/v1/sessions/${session}`, 'alice')).status, 200);
    let after = (await scrape()).x;
    for (let i = 0; i < 100 && total(after, 'broker_iam_request_duration_seconds_count', { operation: 'PutRolePolicy', outcome: 'ok' }) === 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      after = (await scrape()).x;
    }
    const { text } = await scrape();
    after = parseExposition(text);
    const delta = (name: string, labels: Record<string, string> = {}) => total(after, name, labels) - total(before, name, labels);

    // Every broker_ metric declares its type and help.
    for (const [name, type] of [
      ['broker_issuances_total', 'counter'], ['broker_denials_total', 'counter'], ['broker_rate_limit_refusals_total', 'counter'],
      ['broker_sts_request_duration_seconds', 'histogram'], ['broker_iam_request_duration_seconds', 'histogram'],
      ['broker_vault_request_duration_seconds', 'histogram'], ['broker_audit_write_duration_seconds', 'histogram'],
      ['broker_active_sessions', 'gauge'], ['broker_pending_start_requests', 'gauge'], ['broker_audit_sink_backlog_records', 'gauge'],
    ] as const) {
      assert.equal(after.types.get(name), type, name);
      assert.ok((after.helps.get(name) ?? '').length > 10, `${name} has help`);
    }

    assert.equal(delta('broker_issuances_total', { template: 'deploy-lambda', event: 'credentials.issue', decision: 'issued' }), 1);
    assert.equal(delta('broker_issuances_total', { template: 'deploy-lambda', event: 'credentials.reissue', decision: 'issued' }), 1);
    assert.equal(delta('broker_issuances_total', { template: 'limited-logs', event: 'credentials.issue', decision: 'issued' }), 1);
    assert.equal(delta('broker_issuances_total'), 3, 'nothing else counted as an issuance');
    assert.equal(delta('broker_denials_total', { event: 'session.start', reason: 'forbidden' }), 1);
    assert.equal(delta('broker_denials_total', { event: 'session.start', reason: 'not_found' }), 1);
    assert.equal(delta('broker_denials_total', { event: 'session.start', reason: 'conflict' }), 1);
    assert.equal(delta('broker_denials_total', { event: 'login', reason: 'unauthenticated' }), unauthenticated);
    assert.equal(delta('broker_denials_total', { event: 'login', reason: 'rate_limited' }), limitedAuth);
    assert.equal(delta('broker_denials_total'), 3 + unauthenticated + limitedAuth, 'nothing else counted as a denial');
    assert.equal(delta('broker_rate_limit_refusals_total', { limit: 'issue_per_minute' }), 1);
    assert.equal(delta('broker_rate_limit_refusals_total', { limit: 'template_concurrent_sessions' }), 1);
    assert.equal(delta('broker_rate_limit_refusals_total', { limit: 'auth_per_address' }), limitedAuth);
    assert.equal(delta('broker_rate_limit_refusals_total'), 2 + limitedAuth);

    // STS: one observation per AssumeRole the proxy saw, all ok; buckets cumulative up to +Inf = count.
    const assumeRoles = assumeRoleCalls(proxy.requests).length - assumeRolesBefore;
    assert.equal(assumeRoles, 3);
    assert.equal(delta('broker_sts_request_duration_seconds_count', { operation: 'AssumeRole', outcome: 'ok' }), assumeRoles);
    assert.ok(delta('broker_sts_request_duration_seconds_sum', { operation: 'AssumeRole' }) > 0);
    const buckets = after.samples.filter((s) => s.name === 'broker_sts_request_duration_seconds_bucket' && s.labels.operation === 'AssumeRole' && s.labels.outcome === 'ok');
    assert.ok(buckets.length >= 5);
    for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i]!.value >= buckets[i - 1]!.value, 'buckets are cumulative');
    assert.equal(buckets.at(-1)!.labels.le, '+Inf');
    assert.equal(buckets.at(-1)!.value, total(after, 'broker_sts_request_duration_seconds_count', { operation: 'AssumeRole', outcome: 'ok' }));
    assert.ok(total(after, 'broker_iam_request_duration_seconds_count', { operation: 'PutRolePolicy', outcome: 'ok' }) >= 1, 'the deny document write');
    // Audit writes: at least one committed per audited decision above (starts, issues, denials, the end).
    assert.ok(delta('broker_audit_write_duration_seconds_count', { outcome: 'committed' }) >= 8);
    assert.equal(total(after, 'broker_audit_write_duration_seconds_count', { outcome: 'failed' }), 0);
    // Gauges, from the store at scrape time: alice's limited-logs session is open, deploy-lambda ended.
    assert.equal(total(after, 'broker_active_sessions'), 1);
    assert.equal(total(after, 'broker_pending_start_requests'), 0);
    // No sinks in this build: the gauge is declared, with no series.
    assert.equal(after.samples.filter((s) => s.name === 'broker_audit_sink_backlog_records').length, 0);
    // Process metrics are on by default.
    assert.ok(after.samples.some((s) => s.name === 'process_cpu_user_seconds_total'));

    // No identity and no secret: not in any label or value, nor in the text as a whole (scanned as a file too).
    const secrets = issuedSecrets(proxy.requests);
    assert.equal(secrets.length, 3);
    const needles = [
      ...DEFAULT_USERS.map((u) => u.email), 'example.com', ...sessionIds, 'no-such-template-zq', 'checkout-api', 'claude-code',
      ...secrets.flatMap((s) => [s.accessKeyId, s.secretAccessKey, s.sessionToken]), ...Object.values(tokens),
    ];
    for (const n of needles) assert.ok(!text.includes(n), `the exposition holds ${n.slice(0, 12)}…`);
    const file = join(dir, 'scrape.txt');
    writeFileSync(file, text);
    assert.deepEqual(filesContaining([file], secrets.flatMap((s) => [s.accessKeyId, s.secretAccessKey, s.sessionToken])), []);
    // Every label value of the broker's own metrics comes from a closed set.
    const known = new Set(['deploy-lambda', 'limited-logs', 'read-cloudwatch-logs', 's3-artifacts', 'db-migrate']);
    for (const s of after.samples.filter((x) => x.name.startsWith('broker_'))) {
      if (s.labels.template !== undefined) assert.ok(known.has(s.labels.template), `template label ${s.labels.template}`);
      for (const [k, v] of Object.entries(s.labels)) assert.match(v, /^[a-z0-9_.+-]+$|^[A-Z][A-Za-z]+$/i, `${s.name} ${k}=${v}`);
    }
  });

  it('the metrics listener serves GET /metrics and nothing else of the service', async () => {
    for (const path of ['/healthz', '/v1/whoami', '/v1/login-config', '/.well-known/jwks.json', '/requests', '/metrics/x', '/']) {
      const r = await fetch(`${server.metricsUrl}${path}`, { headers: { authorization: `Bearer ${tokens.carol}` } });
      assert.equal(r.status, 404, path);
      assert.equal(await r.text(), 'only /metrics is served here\n');
    }
    const post = await fetch(`${server.metricsUrl}/metrics`, { method: 'POST', headers: { authorization: `Bearer ${tokens.carol}` } });
    assert.equal(post.status, 404);
    await post.text();
    // And it is its own port, on loopback.
    assert.notEqual(new URL(server.metricsUrl!).port, String(server.port));
    assert.equal(new URL(server.metricsUrl!).hostname, '127.0.0.1');
  });

  it('GET /metrics on the API port is for administrators only: 401 without a token, 403 (audited) for a non-admin', async () => {
    const anon = await call('GET', '/metrics');
    assert.equal(anon.status, 401);
    assert.equal(JSON.parse(anon.text).code, 'unauthenticated');
    const before = (await scrape()).x;
    for (const who of ['alice', 'bob']) {
      const r = await call('GET', '/metrics', who);
      assert.equal(r.status, 403, `${who}: ${r.text}`);
      assert.equal(JSON.parse(r.text).code, 'forbidden');
      assert.doesNotMatch(r.text, /broker_/);
    }
    const admin = await call('GET', '/metrics', 'carol');
    assert.equal(admin.status, 200, admin.text);
    assert.match(admin.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const x = parseExposition(admin.text);
    assert.equal(total(x, 'broker_denials_total', { event: 'admin.access', reason: 'forbidden' }) - total(before, 'broker_denials_total', { event: 'admin.access', reason: 'forbidden' }), 2);
    assert.equal(x.types.get('broker_issuances_total'), 'counter');
  });

  it('audit writes: a committed decision is timed as committed; one that cannot begin (store locked past busyTimeoutMs) as failed', async () => {
    const metrics = new ServiceMetrics({ activeSessions: () => 0, pendingStartRequests: () => 0 });
    const file = join(dir, 'locked.db');
    const store = new SqliteStore(file, { busyTimeoutMs: 50, onAuditWrite: (ok, s) => metrics.auditWrite(ok, s) });
    const other = new DatabaseSync(file);
    try {
      await store.auditLog.append({ event: 'admin.view', decision: 'allowed' });
      // A write that records no decision is not an audit write.
      await store.seenIdTokens.remember('k', Date.now() + 60_000);
      other.exec('BEGIN IMMEDIATE');
      await assert.rejects(store.auditLog.append({ event: 'admin.view', decision: 'allowed' }), (e: any) => e.code === 'audit_unavailable');
      other.exec('ROLLBACK');
      const x = parseExposition((await metrics.exposition()).body);
      assert.equal(total(x, 'broker_audit_write_duration_seconds_count', { outcome: 'committed' }), 1);
      assert.equal(total(x, 'broker_audit_write_duration_seconds_count', { outcome: 'failed' }), 1);
      assert.ok(total(x, 'broker_audit_write_duration_seconds_sum', { outcome: 'failed' }) >= 0.04, 'the failed one waited for the lock');
    } finally {
      other.close();
      await store.close();
    }
  });

  it('two services in one process keep their own counts (a registry per service)', async () => {
    const other = await startServer({ ...config, store: { ...config.store, sqlite: join(dir, 'other.db') } }, { log: createLogger({ level: 'silent' }) });
    try {
      const mine = (await scrape()).x;
      const theirs = (await scrape(other.metricsUrl!)).x;
      assert.ok(total(mine, 'broker_issuances_total') >= 3);
      assert.equal(total(theirs, 'broker_issuances_total'), 0);
      assert.equal(total(theirs, 'broker_sts_request_duration_seconds_count'), 0);
      assert.equal(total(theirs, 'broker_active_sessions'), 0);
    } finally {
      await other.stop();
    }
  });
});
