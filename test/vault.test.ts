/**
 * Vault/OpenBao task tokens on real peers: a real OpenBao server (set up by deploy/vault/setup.sh,
 * as an admin would), the service in-process over real HTTP with its own non-root Vault token, the
 * test IdP, moto as STS, and the real `bao` CLI as the client of the issued tokens. One OpenBao for
 * the whole file (2-core machines); tests run in order and share it.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createHash } from 'node:crypto';
import { createServer, request as httpRequest } from 'node:http';
import { connect, createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import { DatabaseSync } from 'node:sqlite';
import { STSClient } from '@aws-sdk/client-sts';
import { importJWK, SignJWT } from 'jose';
import { parseServerConfig, type ServerConfig } from '../broker/config/server-config.js';
import { BrokerError } from '../broker/errors.js';
import { BROKER_TOKEN_AUDIENCE, BrokerTokens, generateSigningJwk, loadSigningKeys } from '../broker/identity/broker-tokens.js';
import { createLogger } from '../broker/log.js';
import { startServer, type RunningServer } from '../broker/server/start.js';
import { ServiceMetrics } from '../broker/metrics/service-metrics.js';
import { SessionVaultTokens } from '../broker/sessions/session-vault-tokens.js';
import { TaskSessionService } from '../broker/sessions/task-session-service.js';
import type { AuditEvent } from '../broker/store/audit-event.js';
import { StsCredentialIssuer } from '../broker/aws/sts-issuer.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import type { Store, VaultTokenRecord, VaultTokenRepository } from '../broker/store/store.js';
import { TemplateCatalog } from '../broker/templates/catalog.js';
import { loadTemplatesOrThrow } from '../broker/templates/load.js';
import type { TaskTemplate } from '../broker/templates/schema.js';
import { VaultAuth } from '../broker/vault/auth.js';
import { VaultHttp } from '../broker/vault/http.js';
import { renewVaultToken } from '../broker/client/vault-renew.js';
import { accessorGone, VaultTokens } from '../broker/vault/tokens.js';
import { run } from './peers/cli.js';
import { startIdp } from './peers/idp.js';
import { createRole, startMoto } from './peers/moto.js';
import { BAO, freePort, startOpenBao, writeKvSecret, type OpenBao } from './peers/openbao.js';
import { FIXTURES_DIR, POLICIES_DIR, REPO_ROOT } from './peers/paths.js';
import { unconfirmedPolicies } from './peers/broker-service.js';
import { filesContaining } from './peers/secret-scan.js';

const DEPLOY = join(REPO_ROOT, 'deploy', 'vault');
const TRUST = JSON.stringify({
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
});

/** Test templates beside the shipped db-migrate (copied as is), deploy-lambda (AWS only) and test/fixtures/migrate-and-deploy.yaml. */
const TEMPLATES: Record<string, string> = {
  'vault-limited': `
name: vault-limited
description: a token with every knob set
allowed: { groups: [developers] }
session: { maxDuration: 2h }
vault:
  policies: [db-migrate-read]
  ttl: 15m
  explicitMaxTtl: 1h
  numUses: 7
  metadata: { team: platform, ticket: OPS-42 }
`,
  'vault-outside': `
name: vault-outside
description: asks for a policy the token role does not allow
allowed: { groups: [developers] }
session: { maxDuration: 1h }
vault:
  policies: [kv-other]
`,
};

interface Call { status: number; body: any; text: string; headers: Headers }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A pass-through HTTP proxy in front of OpenBao that can delay or hold Vault's answers to token
 * creates (`auth/token/create/…`): Vault does the real work at once, only its answer comes late. So a
 * test can make the broker time out after Vault committed a token, or end a session while a create
 * is in flight. Every create answer is kept (`createAnswers`), so the tests can scan for those tokens.
 */
async function startVaultProxy(target: string) {
  const t = new URL(target);
  let delayMs = 0;
  let gate: { arrived: (body: string) => void; released: Promise<void> } | undefined;
  const createAnswers: string[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const up = httpRequest({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: { ...req.headers, host: t.host } }, (answer) => {
        const parts: Buffer[] = [];
        answer.on('data', (c: Buffer) => parts.push(c));
        answer.on('end', () => {
          const body = Buffer.concat(parts);
          const send = () => {
            if (res.destroyed) return; // the broker gave up waiting
            res.writeHead(answer.statusCode ?? 502, answer.headers);
            res.end(body);
          };
          if (!/^\/v1\/auth\/token\/create\//.test(req.url ?? '')) return send();
          createAnswers.push(body.toString());
          const g = gate;
          gate = undefined;
          g?.arrived(body.toString());
          void (g?.released ?? Promise.resolve()).then(() => sleep(delayMs)).then(send);
        });
      });
      up.on('error', () => { if (!res.destroyed) { res.writeHead(502); res.end(); } });
      up.end(Buffer.concat(chunks));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    createAnswers,
    /** Delays every create answer by `ms`. */
    delay(ms: number) { delayMs = ms; },
    /** Holds the next create answer until release(); `arrived` resolves with it once Vault answered. */
    hold(): { arrived: Promise<string>; release(): void } {
      let arrived!: (body: string) => void;
      let release!: () => void;
      const arrivedP = new Promise<string>((r) => { arrived = r; });
      gate = { arrived, released: new Promise<void>((r) => { release = r; }) };
      return { arrived: arrivedP, release };
    },
    stop: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

/** Scratch directories of this file, removed when it is done (after the secret scan). */
const scratch: string[] = [];
function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  scratch.push(d);
  return d;
}
after(() => { for (const d of scratch) rmSync(d, { recursive: true, force: true }); });

describe('Vault/OpenBao task tokens', () => {
  let bao: OpenBao;
  let moto: Awaited<ReturnType<typeof startMoto>>;
  let idp: Awaited<ReturnType<typeof startIdp>>;
  let server: RunningServer;
  let dir: string;
  let policiesDir: string;
  let dbPath: string;
  let logFile: string;
  let brokerVaultToken: string;
  let offsetMs = 0;
  const now = () => Date.now() + offsetMs;
  /** Every secret the tests saw: none may be in a file, a log or the audit log afterwards. */
  const secrets: string[] = [];
  const accessToken: Record<string, string> = {};
  const extraServers: RunningServer[] = [];

  const call = async (base: string, method: string, path: string, token?: string, body?: unknown): Promise<Call> => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: JSON.parse(text), text, headers: res.headers };
  };
  const api = (method: string, path: string, body?: unknown) => call(server.url, method, path, accessToken.alice, body);
  const loginAt = async (base: string, email: string) => {
    const r = await call(base, 'POST', '/v1/auth/token', undefined, { id_token: await idp.loginAs(email) });
    assert.equal(r.status, 200, r.text);
    return r.body.access_token as string;
  };
  const start = async (template: string, extra: Record<string, unknown> = {}) => {
    const r = await api('POST', '/v1/sessions', { template, agent: 'claude-code', reason: 'vault test', ...extra });
    if (r.body?.vault?.token) secrets.push(r.body.vault.token);
    if (r.body?.credentials?.SecretAccessKey) secrets.push(r.body.credentials.SecretAccessKey, r.body.credentials.SessionToken);
    return r;
  };
  const accessors = async (): Promise<string[]> => {
    const r = await bao.api('GET', 'auth/token/accessors?list=true');
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return (r.body.data.keys as string[]).sort();
  };
  const lookupAccessor = (accessor: string) => bao.api('POST', 'auth/token/lookup-accessor', { accessor });
  const kvGet = (token: string, path: string) => run(BAO, ['kv', 'get', '-mount=secret', '-format=json', path], { env: bao.cliEnv(token), timeoutMs: 30_000 });
  const store = () => new SqliteStore(dbPath);
  const auditOf = async (sessionId: string) => {
    const s = store();
    try { return (await s.auditLog.records()).filter((r) => r.sessionId === sessionId); } finally { await s.close(); }
  };
  const tokenRows = async (sessionId: string): Promise<VaultTokenRecord[]> => {
    const s = store();
    try { return await s.vaultTokens.ofSession(sessionId); } finally { await s.close(); }
  };
  const openSessions = async () => ((await api('GET', '/v1/sessions')).body.sessions as { id: string; template: string }[]);
  const alice = { id: 'alice@example.com', email: 'alice@example.com', groups: ['developers'] };
  /** JSON log lines of a test's own logger. */
  const logLines = (file: string) => readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, any>);
  /**
   * The task-session domain on its own store and clock, reaching Vault at `address` (OpenBao, the
   * timing proxy, or a port nobody listens on) with the broker's non-root token.
   */
  const serviceVia = (address: string, o: { timeoutMs?: number; now?: () => number; templates?: TaskTemplate[] } = {}) => {
    const d = tempDir('broker-vault-svc-');
    const now = o.now ?? Date.now;
    const logFile = join(d, 'service.log');
    const log = createLogger({ level: 'debug', destination: openSync(logFile, 'a') });
    const s = new SqliteStore(join(d, 'broker.db'), { now });
    const http = new VaultHttp({ address, timeoutMs: o.timeoutMs ?? 5000 });
    const tokens = new VaultTokens(http, new VaultAuth({ http, method: { kind: 'token', token: { env: 'TEST_BROKER_VAULT_TOKEN' } }, baseDir: d, allowRootToken: false, log }));
    const vault = new SessionVaultTokens({ store: s, tokens, defaultRole: 'broker-tasks', log, now });
    const templates = loadTemplatesOrThrow(policiesDir);
    for (const t of o.templates ?? []) templates.set(t.name, t);
    const svc = new TaskSessionService({ store: s, templates: new TemplateCatalog(templates), issuer: new StsCredentialIssuer(new STSClient({ region: 'us-east-1', endpoint: moto.url }), 8000), log, maxActiveSessions: 20, vault, now });
    return { store: s, vault, svc, logFile };
  };
  const configFor = (d: string, vault: Record<string, unknown> | undefined, extra: Record<string, unknown> = {}): ServerConfig => parseServerConfig({
    listen: { host: '127.0.0.1', port: 0 },
    policiesDir,
    store: { sqlite: join(d, 'broker.db'), busyTimeoutMs: 300 },
    oidc: { issuer: idp.issuer, audience: 'broker-cli', algorithms: ['RS256', 'ES256'], cliClientId: 'broker-cli', allowInsecureHttp: true },
    tokens: { signingKeys: 'ephemeral' },
    aws: { region: 'us-east-1', stsEndpoint: moto.url, iamEndpoint: moto.url, checkTrustAtStartup: false },
    limits: { issuePerMinute: 200 },
    sweeper: { interval: 1 },
    confirm: { default: 'none' },
    ...(vault ? { vault } : {}),
    ...extra,
  }, d);

  before(async () => {
    bao = await startOpenBao();
    secrets.push(bao.rootToken);
    // As an admin would: the shipped setup script writes the policies, the token role and KV v2.
    const setup = await run('bash', [join(DEPLOY, 'setup.sh')], { env: { ...bao.cliEnv(bao.rootToken), VAULT_CLI: BAO }, timeoutMs: 60_000 });
    assert.equal(setup.code, 0, setup.stderr);
    // A policy that exists but that the token role does not allow (for the refusal test).
    const other = await bao.api('PUT', 'sys/policies/acl/kv-other', { policy: 'path "secret/data/other/*" { capabilities = ["read"] }' });
    assert.equal(other.status, 204, JSON.stringify(other.body));
    await writeKvSecret(bao, 'db-migrate/checkout-api', { username: 'migrator', password: 'pw-checkout-1234' });
    await writeKvSecret(bao, 'other/payroll', { key: 'not-for-agents' });
    // The broker's own token: only the broker policy (deploy/vault/broker-policy.hcl), not root.
    const t = await bao.api('POST', 'auth/token/create-orphan', { policies: ['broker'], ttl: '4h', renewable: true, display_name: 'broker-service' });
    assert.equal(t.status, 200, JSON.stringify(t.body));
    brokerVaultToken = t.body.auth.client_token;
    secrets.push(brokerVaultToken);
    process.env.TEST_BROKER_VAULT_TOKEN = brokerVaultToken;
    // Token roles for the role-safety tests, and broker tokens that may use them: `broker-probe` reads
    // and creates against probe-* roles; `broker-noread` may create against probe-noread, not read it.
    const roles: Record<string, Record<string, unknown>> = {
      'probe-nonorphan': { orphan: false, token_explicit_max_ttl: '12h' },
      'probe-nomax': { orphan: true },
      'probe-24h': { orphan: true, token_explicit_max_ttl: '24h' },
      'probe-live': { orphan: true, token_explicit_max_ttl: '12h' },
      'probe-noread': { orphan: true, token_explicit_max_ttl: '12h' },
    };
    for (const [name, role] of Object.entries(roles)) {
      const w = await bao.api('POST', `auth/token/roles/${name}`, { allowed_policies: ['db-migrate-read'], renewable: true, ...role });
      assert.equal(w.status, 204, JSON.stringify(w.body));
    }
    for (const [name, policy] of Object.entries({
      'broker-probe': 'path "auth/token/roles/probe-*" { capabilities = ["read"] }\npath "auth/token/create/probe-*" { capabilities = ["update"] }',
      'broker-noread': 'path "auth/token/create/probe-noread" { capabilities = ["update"] }',
    })) {
      const w = await bao.api('PUT', `sys/policies/acl/${name}`, { policy });
      assert.equal(w.status, 204, JSON.stringify(w.body));
    }
    for (const [env, policies] of [['TEST_PROBE_VAULT_TOKEN', ['broker', 'broker-probe']], ['TEST_NOREAD_VAULT_TOKEN', ['broker', 'broker-noread']]] as const) {
      const p = await bao.api('POST', 'auth/token/create-orphan', { policies, ttl: '4h', display_name: env.toLowerCase() });
      assert.equal(p.status, 200, JSON.stringify(p.body));
      secrets.push(p.body.auth.client_token);
      process.env[env] = p.body.auth.client_token;
    }
    process.env.TEST_ROOT_VAULT_TOKEN = bao.rootToken;
    process.env.AWS_ACCESS_KEY_ID = 'testing';
    process.env.AWS_SECRET_ACCESS_KEY = 'testing';

    moto = await startMoto();
    await createRole(moto.url, 'broker-migrate-deploy', TRUST, 43200);
    await createRole(moto.url, 'broker-deploy-lambda', TRUST, 43200);
    idp = await startIdp();

    dir = tempDir('broker-vault-');
    policiesDir = join(dir, 'policies');
    mkdirSync(policiesDir);
    for (const [name, yaml] of Object.entries(TEMPLATES)) writeFileSync(join(policiesDir, `${name}.yaml`), yaml);
    // Without their confirm sections: these tests start db-migrate directly (start-requests.test.ts is about confirmation).
    const direct = unconfirmedPolicies(POLICIES_DIR);
    for (const name of ['db-migrate', 'deploy-lambda']) copyFileSync(join(direct, `${name}.yaml`), join(policiesDir, `${name}.yaml`));
    copyFileSync(join(FIXTURES_DIR, 'migrate-and-deploy.yaml'), join(policiesDir, 'migrate-and-deploy.yaml'));
    dbPath = join(dir, 'broker.db');
    logFile = join(dir, 'server.log');
    const fd = openSync(logFile, 'a');
    server = await startServer(configFor(dir, { address: bao.url, tokenRole: 'broker-tasks', token: { env: 'TEST_BROKER_VAULT_TOKEN' } }, { metrics: { listen: { port: 0 } } }),
      { log: createLogger({ level: 'debug', destination: fd }), now });
    accessToken.alice = await loginAt(server.url, 'alice@example.com');
  });

  after(async () => {
    for (const s of extraServers) await s.stop().catch(() => {});
    await server?.stop();
    await idp?.stop();
    await moto?.stop();
    await bao?.destroy();
    delete process.env.TEST_BROKER_VAULT_TOKEN;
    delete process.env.TEST_ROOT_VAULT_TOKEN;
    delete process.env.TEST_PROBE_VAULT_TOKEN;
    delete process.env.TEST_NOREAD_VAULT_TOKEN;
  });

  it("issues a token with exactly the template's policies, TTLs, use count and metadata, audited by accessor", async () => {
    const r = await start('vault-limited');
    assert.equal(r.status, 201, r.text);
    const { session, vault } = r.body;
    assert.equal(r.body.credentials, undefined, 'a Vault-only template grants no AWS credentials');
    assert.equal(r.headers.get('cache-control'), 'no-store');
    assert.deepEqual(Object.keys(vault).sort(), ['accessor', 'address', 'expiresAt', 'maxExpiresAt', 'numUses', 'policies', 'renewable', 'token', 'ttlSeconds']);
    assert.equal(vault.address, bao.url);
    assert.deepEqual(session.vault, { address: bao.url, namespace: null, policies: ['db-migrate-read'] });

    const look = await lookupAccessor(vault.accessor);
    assert.equal(look.status, 200, JSON.stringify(look.body));
    const d = look.body.data;
    assert.deepEqual([...d.policies].sort(), ['db-migrate-read', 'default'], 'the template policy, plus Vault\'s default (lookup-self, renew-self)');
    assert.equal(d.num_uses, 7);
    assert.equal(d.creation_ttl, 15 * 60);
    assert.equal(d.explicit_max_ttl, 3600);
    assert.equal(d.renewable, true);
    assert.equal(d.orphan, true, 'orphan: not a child of the broker\'s own token');
    assert.equal(d.role, 'broker-tasks');
    assert.equal(d.display_name, `token-broker-vault-limited-${session.id}`);
    assert.deepEqual(d.meta, { developer: 'alice@example.com', task: 'vault-limited', session: session.id, agent: 'claude-code', team: 'platform', ticket: 'OPS-42' });
    assert.equal(vault.ttlSeconds, 900);
    assert.equal(vault.numUses, 7);
    assert.deepEqual([...vault.policies].sort(), ['db-migrate-read', 'default']);

    const trail = (await auditOf(session.id));
    const issued = trail.find((x) => x.event === 'vault.issue' && x.decision === 'issued');
    assert.ok(issued, JSON.stringify(trail));
    assert.equal(issued.vaultAccessor, vault.accessor);
    assert.equal(issued.detail?.role, 'broker-tasks');
    assert.deepEqual((await tokenRows(session.id)).map((t) => [t.accessor, t.revokedAt]), [[vault.accessor, null]]);

    const end = await api('DELETE', `/v1/sessions/${session.id}`);
    assert.equal(end.status, 200, end.text);
    assert.deepEqual(end.body.vaultTokens, [{ accessor: vault.accessor, revoked: true }]);
  });

  it('metrics: each Vault call in broker_vault_request_duration_seconds by operation, the issue counted; neither token nor accessor in the exposition', async () => {
    // The exposition's sample lines, `name{labels} value` (the format is parsed in full by test/metrics.test.ts).
    const scrape = async () => {
      const text = await (await fetch(`${server.metricsUrl}/metrics`)).text();
      const value = (name: string, labels: string) => Number(text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`))?.split(' ').pop() ?? 0);
      return { text, value };
    };
    const before = await scrape();
    const r = await start('vault-limited');
    assert.equal(r.status, 201, r.text);
    const end = await api('DELETE', `/v1/sessions/${r.body.session.id}`);
    assert.equal(end.status, 200, end.text);
    const after = await scrape();
    const delta = (name: string, labels: string) => after.value(name, labels) - before.value(name, labels);
    assert.equal(delta('broker_vault_request_duration_seconds_count', 'operation="token_create",outcome="ok"'), 1);
    assert.ok(delta('broker_vault_request_duration_seconds_count', 'operation="token_revoke_accessor",outcome="ok"') >= 1);
    assert.ok(after.value('broker_vault_request_duration_seconds_sum', 'operation="token_create",outcome="ok"') > 0);
    assert.equal(delta('broker_issuances_total', 'template="vault-limited",event="vault.issue",decision="issued"'), 1);
    for (const s of [r.body.vault.token, r.body.vault.accessor, r.body.session.id, 'alice@example.com']) assert.ok(!after.text.includes(s));
  });

  it('the bao CLI reads what the policy allows and is denied the rest; ending the session revokes the token', async () => {
    const r = await start('db-migrate');
    assert.equal(r.status, 201, r.text);
    const { session, vault } = r.body;
    const allowed = await kvGet(vault.token, 'db-migrate/checkout-api');
    assert.equal(allowed.code, 0, allowed.stderr);
    assert.equal(JSON.parse(allowed.stdout).data.data.username, 'migrator');
    const denied = await kvGet(vault.token, 'other/payroll');
    assert.notEqual(denied.code, 0);
    assert.match(denied.stderr, /permission denied/);

    const end = await api('DELETE', `/v1/sessions/${session.id}`);
    assert.equal(end.status, 200, end.text);
    assert.deepEqual(end.body.vaultTokens, [{ accessor: vault.accessor, revoked: true }]);
    const look = await lookupAccessor(vault.accessor);
    assert.equal(look.status, 400, 'Vault no longer knows the accessor');
    const afterEnd = await kvGet(vault.token, 'db-migrate/checkout-api');
    assert.notEqual(afterEnd.code, 0);
    assert.match(afterEnd.stderr, /permission denied/);

    const trail = (await auditOf(session.id)).map((x) => `${x.event}:${x.decision}`);
    assert.deepEqual(trail, ['session.start:allowed', 'vault.issue:issued', 'session.end:ended', 'vault.revoke:revoked']);
    assert.notEqual((await tokenRows(session.id))[0]!.revokedAt, null);
  });

  it("refuses a policy outside the token role's allowed_policies: clear error, no token, no session", async () => {
    const before = await accessors();
    const r = await start('vault-outside');
    assert.equal(r.status, 502, r.text);
    assert.equal(r.body.code, 'upstream_error');
    assert.match(r.body.message, /^Vault refused to create a token with role broker-tasks \(HTTP 400\): .*must be subset of the role's allowed policies/);
    assert.match(r.body.hint, /allowed_policies of the token role "broker-tasks"/);
    assert.match(r.body.hint, /vault-outside/);
    assert.deepEqual(await accessors(), before, 'no token was created');
    assert.deepEqual((await openSessions()).filter((s) => s.template === 'vault-outside'), [], 'no session left open');
  });

  it('one session grants AWS credentials and a Vault token; ending it ends both', async () => {
    const r = await start('migrate-and-deploy');
    assert.equal(r.status, 201, r.text);
    const { session, credentials, vault } = r.body;
    assert.equal(credentials.Version, 1);
    assert.match(credentials.AccessKeyId, /^[A-Z0-9]{16,}$/);
    assert.ok(vault.token);
    assert.equal((await lookupAccessor(vault.accessor)).status, 200);
    // The Vault token's explicit max TTL is capped by the session (2h max), below the role's 12h.
    assert.ok(Date.parse(vault.maxExpiresAt) <= Date.parse(session.expiresAt) + 1000);
    const re = await api('POST', `/v1/sessions/${session.id}/credentials`);
    assert.equal(re.status, 200, re.text);
    secrets.push(re.body.credentials.SecretAccessKey, re.body.credentials.SessionToken);

    const end = await api('DELETE', `/v1/sessions/${session.id}`);
    assert.equal(end.status, 200, end.text);
    assert.equal((await lookupAccessor(vault.accessor)).status, 400, 'the Vault token is revoked');
    const again = await api('POST', `/v1/sessions/${session.id}/credentials`);
    assert.equal(again.status, 409, 'no AWS credentials after the end');
    const trail = (await auditOf(session.id)).map((x) => `${x.event}:${x.decision}`);
    assert.deepEqual(trail.slice(0, 3), ['session.start:allowed', 'vault.issue:issued', 'credentials.issue:issued'], 'the revocable token first');
  });

  it('re-issues a token under an active session; the old one stays valid until the end; the daemon can renew in place', async () => {
    const r = await start('db-migrate', { ttl: '30m' });
    assert.equal(r.status, 201, r.text);
    const { session, vault } = r.body;
    const re = await api('POST', `/v1/sessions/${session.id}/vault-token`);
    assert.equal(re.status, 200, re.text);
    secrets.push(re.body.vault.token);
    assert.notEqual(re.body.vault.accessor, vault.accessor);
    assert.equal(re.body.session.id, session.id);
    assert.equal((await lookupAccessor(vault.accessor)).status, 200, 'the earlier token stays valid');

    // renew-self with the token itself, never beyond the session's end.
    const renewed = await renewVaultToken({ address: vault.address, token: re.body.vault.token, notAfter: new Date(session.expiresAt), incrementSeconds: 24 * 3600 });
    assert.ok(renewed.ttlSeconds > 0 && renewed.ttlSeconds <= 30 * 60, `renewed for ${renewed.ttlSeconds}s, within the 30m session`);
    await assert.rejects(renewVaultToken({ address: vault.address, token: vault.token, notAfter: new Date(Date.now() - 1000) }),
      (e: unknown) => e instanceof BrokerError && e.code === 'conflict');
    const bogus = await renewVaultToken({ address: vault.address, token: 'not-a-token', notAfter: new Date(session.expiresAt) }).catch((e: unknown) => e);
    assert.ok(bogus instanceof BrokerError && bogus.code === 'upstream_error', String(bogus));
    assert.ok(!bogus.message.includes('not-a-token'), 'the token is not in the error');

    const aws = await api('POST', `/v1/sessions/${session.id}/credentials`);
    assert.equal(aws.status, 409, 'a Vault-only session has no AWS credentials to re-issue');
    assert.match(aws.body.hint, /vault-token/);

    const end = await api('DELETE', `/v1/sessions/${session.id}`);
    assert.deepEqual(end.body.vaultTokens.map((t: { revoked: boolean }) => t.revoked), [true, true], 'both tokens revoked');
    assert.equal((await lookupAccessor(vault.accessor)).status, 400);
    assert.equal((await lookupAccessor(re.body.vault.accessor)).status, 400);
    const trail = (await auditOf(session.id)).map((x) => `${x.event}:${x.decision}`);
    assert.ok(trail.includes('vault.reissue:issued'), trail.join(' '));
    assert.equal(trail.filter((x) => x === 'vault.revoke:revoked').length, 2);
  });

  it('nothing half-created: STS failing after the Vault token revokes the token and ends the session', async () => {
    const d = tempDir('broker-vault-unit-');
    const s = new SqliteStore(join(d, 'broker.db'));
    const log = createLogger({ level: 'silent' });
    const tokens = new VaultTokens(new VaultHttp({ address: bao.url, timeoutMs: 5000 }),
      new VaultAuth({ http: new VaultHttp({ address: bao.url, timeoutMs: 5000 }), method: { kind: 'token', token: { env: 'TEST_BROKER_VAULT_TOKEN' } }, baseDir: d, allowRootToken: false, log }));
    // STS at a port nobody listens on: the AWS half fails after the Vault half succeeded.
    const deadSts = new STSClient({ region: 'us-east-1', endpoint: `http://127.0.0.1:${await freePort()}`, maxAttempts: 1, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });
    const svc = new TaskSessionService({
      store: s, templates: new TemplateCatalog(loadTemplatesOrThrow(policiesDir)), issuer: new StsCredentialIssuer(deadSts, 8000), log, maxActiveSessions: 5,
      vault: new SessionVaultTokens({ store: s, tokens, defaultRole: 'broker-tasks', log, now: Date.now }),
    });
    const before = await accessors();
    const alice = { id: 'alice@example.com', email: 'alice@example.com', groups: ['developers'] };
    await assert.rejects(svc.start(alice, { template: 'migrate-and-deploy', params: {}, reason: '', agent: 'x' }),
      (e: unknown) => e instanceof BrokerError && e.code === 'upstream_unavailable' && /STS/.test(e.message));
    assert.deepEqual(await accessors(), before, 'the token created first was revoked');
    assert.deepEqual((await s.sessions.active('alice@example.com')), [], 'no session left open');
    const trail = (await s.auditLog.records()).map((x) => `${x.event}:${x.decision}`);
    assert.deepEqual(trail, ['session.start:allowed', 'vault.issue:issued', 'credentials.issue:failed', 'session.end:ended', 'vault.revoke:revoked']);
    assert.equal((await s.auditLog.verify()), null);
    s.close();
    deadSts.destroy();
  });

  it('fails closed: a token whose issue cannot be audited is revoked and never returned', async () => {
    const d = tempDir('broker-vault-unit-');
    // The SQLite store, with a Vault-token repository whose record never commits.
    const sqlite = new SqliteStore(join(d, 'broker.db'));
    const vaultTokens: VaultTokenRepository = Object.create(sqlite.vaultTokens, {
      record: {
        value: async (_t: unknown, e: AuditEvent): Promise<boolean> => {
          throw new BrokerError('audit_unavailable', `the audit log could not record ${e.event} ${e.decision}; nothing was issued`);
        },
      },
    }) as VaultTokenRepository;
    const s: Store = {
      auditLog: sqlite.auditLog, sessions: sqlite.sessions, vaultTokens, refreshTokenFamilies: sqlite.refreshTokenFamilies, seenIdTokens: sqlite.seenIdTokens, startRequests: sqlite.startRequests, freezes: sqlite.freezes, revocations: sqlite.revocations, templateVersions: sqlite.templateVersions,
      close: () => sqlite.close(),
    };
    const log = createLogger({ level: 'silent' });
    const http = new VaultHttp({ address: bao.url, timeoutMs: 5000 });
    const tokens = new VaultTokens(http, new VaultAuth({ http, method: { kind: 'token', token: { env: 'TEST_BROKER_VAULT_TOKEN' } }, baseDir: d, allowRootToken: false, log }));
    const metrics = new ServiceMetrics({ activeSessions: () => 0, pendingStartRequests: () => 0 });
    const svc = new TaskSessionService({
      store: s, templates: new TemplateCatalog(loadTemplatesOrThrow(policiesDir)), issuer: new StsCredentialIssuer(new STSClient({ region: 'us-east-1' }), 8000), log, maxActiveSessions: 5,
      vault: new SessionVaultTokens({ store: s, tokens, defaultRole: 'broker-tasks', log, now: Date.now, metrics }),
    });
    const before = await accessors();
    await assert.rejects(svc.start({ id: 'alice@example.com', email: 'alice@example.com', groups: ['developers'] }, { template: 'db-migrate', params: {}, reason: '', agent: 'x' }),
      (e: unknown) => e instanceof BrokerError && e.code === 'audit_unavailable');
    assert.deepEqual(await accessors(), before, 'the unaudited token was revoked');
    assert.deepEqual((await s.sessions.active('alice@example.com')), []);
    // Created by Vault, never handed out: withheld, not issued.
    const exposition = (await metrics.exposition()).body;
    assert.match(exposition, /^broker_issuances_total\{template="db-migrate",event="vault\.issue",decision="withheld"\} 1$/m);
    assert.doesNotMatch(exposition, /decision="issued"/);
    s.close();
  });

  it('Vault down: a clear 503 and nothing half-created; AWS tasks still work; back up: tasks work and the sweeper revokes what was left', async () => {
    const held = await start('db-migrate');
    assert.equal(held.status, 201, held.text);
    await bao.stop();
    try {
      const r = await start('vault-limited');
      assert.equal(r.status, 503, r.text);
      assert.equal(r.body.code, 'upstream_unavailable');
      assert.match(r.body.message, new RegExp(`^Vault at ${bao.url.replace(/\./g, '\\.')} is unreachable \\(ECONNREFUSED\\)`));
      assert.ok(!secrets.some((sec) => r.text.includes(sec)), 'no token in the error');
      assert.deepEqual((await openSessions()).map((s) => s.template), ['db-migrate'], 'no half-created session');

      const aws = await start('deploy-lambda', { params: { function: 'checkout-api' } });
      assert.equal(aws.status, 201, `AWS-only tasks do not need Vault: ${aws.text}`);
      await api('DELETE', `/v1/sessions/${aws.body.session.id}`);

      const end = await api('DELETE', `/v1/sessions/${held.body.session.id}`);
      assert.equal(end.status, 200, end.text);
      assert.equal(end.body.vaultTokens.length, 1);
      assert.equal(end.body.vaultTokens[0].revoked, false);
      assert.match(end.body.vaultTokens[0].error, /unreachable/);
      const trail = (await auditOf(held.body.session.id)).map((x) => `${x.event}:${x.decision}`);
      assert.ok(trail.includes('vault.revoke:failed'), trail.join(' '));
    } finally {
      await bao.restart();
    }
    // The token survived the outage (persistent storage) and is still live until the sweeper runs.
    const next = await start('vault-limited');
    assert.equal(next.status, 201, next.text);
    await api('DELETE', `/v1/sessions/${next.body.session.id}`);

    const accessor = held.body.vault.accessor as string;
    const deadline = Date.now() + 15_000;
    while ((await tokenRows(held.body.session.id))[0]!.revokedAt === null) {
      assert.ok(Date.now() < deadline, 'the sweeper revoked the token within 15 s');
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal((await lookupAccessor(accessor)).status, 400);
    const denied = await kvGet(held.body.vault.token, 'db-migrate/checkout-api');
    assert.match(denied.stderr, /permission denied/);
    const row = (await tokenRows(held.body.session.id))[0]!;
    assert.ok(row.revokeAttempts >= 1);
    const revoked = (await auditOf(held.body.session.id)).filter((x) => x.event === 'vault.revoke' && x.decision === 'revoked');
    assert.equal(revoked.length, 1);
    assert.equal(revoked[0]!.vaultAccessor, accessor);
  });

  it('ends expired sessions and revokes their tokens (sweeper, clock moved forward)', async () => {
    const r = await start('vault-limited', { ttl: '15m' });
    assert.equal(r.status, 201, r.text);
    const { session, vault } = r.body;
    assert.ok(vault.ttlSeconds <= 15 * 60);
    offsetMs += 16 * 60_000;
    const deadline = Date.now() + 15_000;
    while ((await tokenRows(session.id))[0]!.revokedAt === null) {
      assert.ok(Date.now() < deadline, 'revoked within 15 s');
      await new Promise((res) => setTimeout(res, 200));
    }
    assert.equal((await lookupAccessor(vault.accessor)).status, 400, 'revoked in Vault, before its own TTL ran out');
    const trail = (await auditOf(session.id));
    const ended = trail.find((x) => x.event === 'session.end');
    assert.equal(ended?.reason, 'expired');
    assert.ok(trail.some((x) => x.event === 'vault.revoke' && x.decision === 'revoked' && x.reason === 'expired'));
    const reissue = await api('POST', `/v1/sessions/${session.id}/vault-token`);
    assert.equal(reissue.status, 409);
  });

  it('a token Vault no longer knows (revoked behind the broker, or expired) is recorded as revoked, once, without warnings', async () => {
    // Revoked in Vault behind the broker's back (by an admin, with the root token).
    const r = await start('db-migrate');
    assert.equal(r.status, 201, r.text);
    const { session, vault } = r.body;
    assert.equal((await bao.api('POST', 'auth/token/revoke-accessor', { accessor: vault.accessor })).status, 204);
    const end = await api('DELETE', `/v1/sessions/${session.id}`);
    assert.equal(end.status, 200, end.text);
    assert.deepEqual(end.body.vaultTokens, [{ accessor: vault.accessor, revoked: true }]);
    await sleep(2500); // two sweeps (interval 1 s): nothing left for them to retry
    const row = (await tokenRows(session.id))[0]!;
    assert.notEqual(row.revokedAt, null);
    assert.equal(row.revokeAttempts, 0);
    const revokes = (await auditOf(session.id)).filter((x) => x.event === 'vault.revoke');
    assert.deepEqual(revokes.map((x) => x.decision), ['revoked']);
    assert.equal(revokes[0]!.detail?.alreadyGoneInVault, true);
    const lines = readFileSync(logFile, 'utf8').split('\n').filter((l) => l.includes(vault.accessor));
    assert.ok(!lines.some((l) => /could not revoke/.test(l)), lines.join('\n'));

    // Expired in Vault at its own (3 s) explicit max TTL before the session ended. Templates need a
    // ttl of at least 1m, so this one is built here, past validation: Vault is what is under test.
    const db = loadTemplatesOrThrow(policiesDir).get('db-migrate')!;
    const blink: TaskTemplate = { ...db, name: 'vault-blink', vault: { ...db.vault!, ttlSeconds: 2, explicitMaxTtlSeconds: 3, renewable: false } };
    const { store: s, svc, logFile: own } = serviceVia(bao.url, { templates: [blink] });
    const started = await svc.start(alice, { template: 'vault-blink', params: {}, reason: 'expires in Vault', agent: 'x' });
    secrets.push(started.vault!.token);
    const row2 = (await s.vaultTokens.ofSession(started.session.id))[0]!;
    assert.ok(row2.deadBy !== null && row2.deadBy - row2.createdAt <= 3000 + 1000, 'a non-renewable token is dead at its own explicit max TTL');
    await sleep(4000);
    assert.equal((await lookupAccessor(started.vault!.accessor)).status, 400, 'Vault expired it');
    const ended = await svc.end(alice, started.session.id);
    assert.deepEqual(ended.vaultTokens, [{ accessor: started.vault!.accessor, revoked: true }]);
    assert.equal((await s.vaultTokens.ofSession(started.session.id))[0]!.revokeAttempts, 0);
    assert.deepEqual(await svc.revokePending(), [], 'nothing left to retry');
    const rec = (await s.auditLog.records()).filter((x) => x.event === 'vault.revoke');
    assert.deepEqual(rec.map((x) => [x.decision, x.detail?.alreadyGoneInVault]), [['revoked', true]]);
    assert.ok(!logLines(own).some((l) => l.level >= 40), 'no warning');
    s.close();
  });

  it("answers that say Vault has no such token any more count as revoked; other refusals are retried", () => {
    // Token store handleUpdateRevokeAccessor: an unknown accessor is a 200 with a warning (OpenBao
    // answered that above); an accessor whose token is already gone is a 400 "token not found";
    // older Vault said "invalid accessor". Vault's error text as the broker keeps it (whitespace folded).
    assert.equal(accessorGone(200, ['No token found with this accessor']), true);
    assert.equal(accessorGone(400, ['token not found']), true);
    assert.equal(accessorGone(400, ['1 error occurred: * invalid accessor']), true);
    assert.equal(accessorGone(200, []), false, 'a plain 204/200 revocation found the token');
    assert.equal(accessorGone(400, ['missing accessor']), false);
    assert.equal(accessorGone(403, ['permission denied']), false);
    assert.equal(accessorGone(500, ['token not found']), false);
  });

  it('sweeper: failing revocations rotate (old ones cannot starve new ones) and are given up, audited, once the token is past the latest it can live', async () => {
    let clock = Date.now();
    const dead = `http://127.0.0.1:${await freePort()}`;
    const { store: s, vault, logFile: own } = serviceVia(dead, { now: () => clock });
    const t0 = clock;
    const mk = async (id: string, accessor: string, createdAt: number, deadBy: number) => {
      await s.sessions.create({ id, developer: 'alice@example.com', template: 'db-migrate', params: {}, reason: '', agent: 'x', roleSessionName: `alice.db-migrate.${id}`, createdAt, expiresAt: createdAt + 3_600_000 },
        { event: 'session.start', decision: 'allowed', developer: 'alice@example.com', template: 'db-migrate', sessionId: id });
      assert.equal(await s.vaultTokens.record({ accessor, sessionId: id, createdAt, expiresAt: deadBy, deadBy },
        { event: 'vault.issue', decision: 'issued', developer: 'alice@example.com', template: 'db-migrate', sessionId: id, vaultAccessor: accessor },
        { event: 'vault.issue', decision: 'denied', developer: 'alice@example.com', template: 'db-migrate', sessionId: id, vaultAccessor: accessor }), true);
      await s.sessions.end(id, 'ended by developer', { event: 'session.end', decision: 'ended', developer: 'alice@example.com', template: 'db-migrate', sessionId: id });
    };
    await mk('sweepold01', 'acc-old-never-revocable', t0, t0 + 30 * 60_000);
    clock += 10 * 60_000;
    await mk('sweepnew01', 'acc-new-unknown-to-vault', clock, clock + 2 * 3_600_000);
    const attempts = async () => Object.fromEntries((await s.vaultTokens.toRevoke()).map((r) => [r.accessor, r.revokeAttempts]));

    // Vault unreachable: each sweep stops at the first failure, and the row tried goes to the back.
    const first = await vault.revokePending();
    assert.deepEqual(first.map((r) => [r.accessor, r.revoked]), [['acc-old-never-revocable', false]]);
    assert.match(first[0]!.error ?? '', /unreachable \(ECONNREFUSED\)/);
    clock += 60_000;
    assert.deepEqual((await vault.revokePending()).map((r) => r.accessor), ['acc-new-unknown-to-vault'], 'the newer row gets its turn');
    clock += 60_000;
    assert.deepEqual((await vault.revokePending()).map((r) => r.accessor), ['acc-old-never-revocable'], 'then the least recently tried');
    assert.deepEqual(await attempts(), { 'acc-old-never-revocable': 2, 'acc-new-unknown-to-vault': 1 });

    // Past the old token's latest end (plus the clock margin): given up without asking Vault, audited.
    clock = t0 + 30 * 60_000 + 5 * 60_000 + 1000;
    const lapsed = await vault.revokePending();
    assert.deepEqual(lapsed.map((r) => [r.accessor, r.revoked, r.lapsed ?? false]),
      [['acc-old-never-revocable', false, true], ['acc-new-unknown-to-vault', false, false]]);
    const expired = (await s.auditLog.records()).filter((x) => x.event === 'vault.revoke' && x.decision === 'expired');
    assert.equal(expired.length, 1);
    assert.equal(expired[0]!.vaultAccessor, 'acc-old-never-revocable');
    assert.equal(expired[0]!.expiration, new Date(t0 + 30 * 60_000).toISOString());
    assert.match(expired[0]!.reason ?? '', /^ended by developer; not revoked after 2 attempt\(s\), and past .* the latest Vault can keep it alive: it has expired in Vault; no more retries$/);
    assert.notEqual((await s.vaultTokens.ofSession('sweepold01'))[0]!.lapsedAt, null);
    for (let i = 0; i < 5; i++) {
      clock += 60_000;
      assert.ok(!(await vault.revokePending()).some((r) => r.accessor === 'acc-old-never-revocable'), 'never retried again');
    }
    assert.equal((await s.auditLog.records()).filter((x) => x.decision === 'expired').length, 1, 'audited once');
    // A long outage warns at attempts 1, 2, 4 …, not at every sweep.
    const warned = logLines(own).filter((l) => l.accessor === 'acc-new-unknown-to-vault' && /could not revoke/.test(l.msg));
    assert.deepEqual(warned.map((l) => [l.attempts, l.level === 40 ? 'warn' : 'debug']),
      [[1, 'warn'], [2, 'warn'], [3, 'debug'], [4, 'warn'], [5, 'debug'], [6, 'debug'], [7, 'debug']]);

    // Vault back: the other row is revoked (Vault answers that it has no such token).
    const back = new SessionVaultTokens({
      store: s, tokens: new VaultTokens(new VaultHttp({ address: bao.url, timeoutMs: 5000 }), new VaultAuth({ http: new VaultHttp({ address: bao.url, timeoutMs: 5000 }), method: { kind: 'token', token: { env: 'TEST_BROKER_VAULT_TOKEN' } }, baseDir: policiesDir, allowRootToken: false, log: createLogger({ level: 'silent' }) })),
      defaultRole: 'broker-tasks', log: createLogger({ level: 'silent' }), now: () => clock,
    });
    assert.deepEqual(await back.revokePending(), [{ accessor: 'acc-new-unknown-to-vault', revoked: true }]);
    assert.deepEqual((await s.vaultTokens.toRevoke()), []);
    assert.equal((await s.auditLog.verify()), null);
    s.close();
  });

  it('records how long a renewable token can live: the token role\'s token_explicit_max_ttl, not its own explicit max TTL', async () => {
    const { store: s, svc } = serviceVia(bao.url);
    const started = await svc.start(alice, { template: 'vault-limited', params: {}, reason: 'dead-by', agent: 'x' });
    secrets.push(started.vault!.token);
    const row = (await s.vaultTokens.ofSession(started.session.id))[0]!;
    // deploy/vault/token-role-broker-tasks.json: token_explicit_max_ttl 12h; the token's own is 1h.
    assert.ok(Math.abs(row.deadBy! - row.createdAt - 12 * 3_600_000) < 5000, `deadBy ${row.deadBy! - row.createdAt} ms after creation`);
    assert.equal(row.expiresAt - row.createdAt, 3_600_000, 'the token\'s own explicit max TTL');
    await svc.end(alice, started.session.id);
    s.close();
  });

  it('a create that times out after Vault committed it: the failed record names the display_name and the latest expiry', async () => {
    const proxy = await startVaultProxy(bao.url);
    try {
      proxy.delay(2000);
      const { store: s, svc, logFile: own } = serviceVia(proxy.url, { timeoutMs: 500 });
      const before = await accessors();
      const startedAt = Date.now();
      const e = await svc.start(alice, { template: 'db-migrate', params: {}, reason: 'slow vault', agent: 'x' }).catch((x: unknown) => x);
      assert.ok(e instanceof BrokerError && e.code === 'upstream_unavailable', String(e));
      assert.match(e.message, /^Vault at http:\/\/127\.0\.0\.1:\d+ is unreachable \(no answer within 500 ms\): could not create a token with role broker-tasks$/);
      const failed = (await s.auditLog.records()).find((x) => x.event === 'vault.issue' && x.decision === 'failed');
      assert.ok(failed, 'the failed create is audited');
      const displayName = `token-broker-db-migrate-${failed.sessionId}`;
      assert.equal(failed.detail?.mayExist, true);
      assert.equal(failed.detail?.displayName, displayName);
      assert.match(failed.reason ?? '', new RegExp(`Vault may have created the token anyway \\(display_name ${displayName}, accessor unknown to the broker\\); if so it expires by `));
      assert.equal(failed.detail?.expiresBy, failed.expiration);
      assert.deepEqual((await s.sessions.active('alice@example.com')), [], 'the session was abandoned');
      assert.ok(logLines(own).some((l) => l.level === 40 && l.displayName === displayName), 'and logged');

      // Vault did create it: the token exists, and dies no later than the audit record says.
      await sleep(2500);
      for (const a of proxy.createAnswers) secrets.push(JSON.parse(a).auth.client_token);
      const created = (await accessors()).filter((a) => !before.includes(a));
      assert.equal(created.length, 1, 'Vault committed the create the broker timed out on');
      const look = await lookupAccessor(created[0]!);
      assert.equal(look.body.data.display_name, displayName);
      const latest = Date.parse(look.body.data.issue_time) + look.body.data.explicit_max_ttl * 1000;
      assert.ok(latest <= Date.parse(failed.expiration!) + 1000, `explicit max ${new Date(latest).toISOString()} <= ${failed.expiration}`);
      assert.ok(Date.parse(failed.expiration!) - startedAt <= 4 * 3_600_000 + 5000, 'bounded by the explicit max TTL (db-migrate: 4h)');
      // What docs/vault.md tells an admin to do: find it by display_name and revoke it.
      assert.equal((await bao.api('POST', 'auth/token/revoke-accessor', { accessor: created[0] })).status, 204);
      s.close();
    } finally {
      await proxy.stop();
    }
  });

  it('a re-issue racing an end: the token created meanwhile is revoked and not handed out (409)', async () => {
    const proxy = await startVaultProxy(bao.url);
    try {
      const { store: s, svc } = serviceVia(proxy.url);
      const started = await svc.start(alice, { template: 'db-migrate', params: {}, reason: 'race', agent: 'x' });
      secrets.push(started.vault!.token);
      const held = proxy.hold();
      const reissue = svc.reissueVaultToken(alice, started.session.id);
      reissue.catch(() => {}); // asserted below
      const answer = JSON.parse(await held.arrived) as { auth: { client_token: string; accessor: string } };
      secrets.push(answer.auth.client_token);
      // The session ends (and its first token is revoked) while Vault's answer is on its way.
      const ended = await svc.end(alice, started.session.id);
      assert.deepEqual(ended.vaultTokens, [{ accessor: started.vault!.accessor, revoked: true }]);
      held.release();
      await assert.rejects(reissue, (e: unknown) => e instanceof BrokerError && e.code === 'conflict'
        && /^task session \w+ ended while its Vault token was being created; the token was revoked$/.test(e.message));
      assert.equal((await lookupAccessor(answer.auth.accessor)).status, 400, 'the token created during the race is revoked');
      const denied = await kvGet(answer.auth.client_token, 'db-migrate/checkout-api');
      assert.match(denied.stderr, /permission denied/);
      assert.deepEqual((await s.vaultTokens.ofSession(started.session.id)).map((r) => [r.accessor, r.revokedAt !== null]),
        [[started.vault!.accessor, true], [answer.auth.accessor, true]], 'both recorded (in order of creation), both revoked');
      const trail = (await s.auditLog.records()).filter((x) => x.sessionId === started.session.id).map((x) => `${x.event}:${x.decision}${x.vaultAccessor === answer.auth.accessor ? '*' : ''}`);
      assert.deepEqual(trail, ['session.start:allowed', 'vault.issue:issued', 'session.end:ended', 'vault.revoke:revoked', 'vault.reissue:denied*', 'vault.revoke:revoked*']);
      s.close();
    } finally {
      await proxy.stop();
    }
  });

  it('keeps the audit hash chain intact, with accessors and without tokens', async () => {
    const s = store();
    try {
      assert.equal((await s.auditLog.verify()), null);
      const records = JSON.stringify((await s.auditLog.records(0, 100_000)));
      assert.ok(records.includes('"vaultAccessor"'));
      for (const secret of secrets) assert.ok(!records.includes(secret), 'no secret in the audit log');
    } finally {
      s.close();
    }
  });

  it('refuses to start with a root token unless allowed', async () => {
    const d = tempDir('broker-vault-root-');
    const vault = { address: bao.url, tokenRole: 'broker-tasks', token: { env: 'TEST_ROOT_VAULT_TOKEN' } };
    await assert.rejects(startServer(configFor(d, vault), { log: createLogger({ level: 'silent' }) }), (e: unknown) => {
      assert.ok(e instanceof BrokerError);
      assert.equal(e.code, 'invalid_config');
      assert.match(e.message, /the broker's own Vault token \(accessor \S+\) has the root policy; the broker refuses to run with it/);
      assert.match(e.hint ?? '', /allowRootToken: true/);
      assert.ok(!e.message.includes(bao.rootToken) && !(e.hint ?? '').includes(bao.rootToken));
      return true;
    });
    const dev = await startServer(configFor(d, { ...vault, allowRootToken: true }), { log: createLogger({ level: 'silent' }) });
    await dev.stop();
  });

  it('logs in with its own JWT (Vault JWT auth against the broker JWKS); that JWT is no broker access token, and a broker access token is no Vault login', async () => {
    const port = await freePort();
    const publicUrl = `http://127.0.0.1:${port}`;
    const d = tempDir('broker-vault-jwt-');
    // A signing key the test knows too, so it can sign JWTs that differ from the broker's only where it chooses.
    const jwk = await generateSigningJwk('vault-jwt-test');
    process.env.TEST_JWT_SIGNING_KEY = JSON.stringify(jwk);
    secrets.push(jwk.d!);
    // Started before Vault trusts it: the first login fails, and that is not fatal for JWT auth.
    const jwtServer = await startServer(configFor(d, { address: bao.url, tokenRole: 'broker-tasks', jwt: { role: 'broker', audience: 'vault-broker-test' } },
      { listen: { host: '127.0.0.1', port }, publicUrl, tokens: { signingKeys: [{ env: 'TEST_JWT_SIGNING_KEY' }] } }), { log: createLogger({ level: 'silent' }) });
    extraServers.push(jwtServer);
    const setup = await run('bash', [join(DEPLOY, 'setup.sh'), 'jwt', publicUrl, 'vault-broker-test'], { env: { ...bao.cliEnv(bao.rootToken), VAULT_CLI: BAO }, timeoutMs: 60_000 });
    assert.equal(setup.code, 0, setup.stderr);
    const token = await loginAt(jwtServer.url, 'alice@example.com');
    const r = await call(jwtServer.url, 'POST', '/v1/sessions', token, { template: 'db-migrate', agent: 'aider' });
    assert.equal(r.status, 201, r.text);
    secrets.push(r.body.vault.token);
    const look = await lookupAccessor(r.body.vault.accessor);
    assert.equal(look.body.data.meta.agent, 'aider');
    await call(jwtServer.url, 'DELETE', `/v1/sessions/${r.body.session.id}`, token);

    const tokens = new BrokerTokens(await loadSigningKeys('ephemeral', d), publicUrl, { access: 600 });
    const loginJwt = await tokens.signVaultLoginJwt('vault-broker-test');
    await assert.rejects(tokens.verifyAccess(loginJwt), (e: unknown) => e instanceof BrokerError && e.code === 'unauthenticated');
    assert.throws(() => tokens.signVaultLoginJwt('agent-credential-broker'), TypeError);

    // The other direction: Vault's JWT role (deploy/vault/setup.sh jwt) refuses broker access tokens.
    const vaultLogin = (jwt: string) => bao.api('POST', 'auth/jwt/login', { role: 'broker', jwt }, '');
    const before = await accessors();
    const refused = await vaultLogin(token);
    assert.equal(refused.status, 400, JSON.stringify(refused.body));
    // Signed by the broker's key about the broker itself (iss and sub as in its Vault login), with the
    // access tokens' audience and typ: only `aud` differs from a login Vault accepts, and it is refused.
    const key = await importJWK(jwk, 'ES256');
    const aboutBroker = (aud: string) => new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid: jwk.kid!, typ: 'at+jwt' })
      .setIssuer(publicUrl).setSubject(publicUrl).setAudience(aud).setIssuedAt().setExpirationTime('60s').sign(key);
    const wrongAudience = await vaultLogin(await aboutBroker(BROKER_TOKEN_AUDIENCE));
    assert.equal(wrongAudience.status, 400, JSON.stringify(wrongAudience.body));
    assert.match(JSON.stringify(wrongAudience.body.errors), /aud/);
    assert.deepEqual(await accessors(), before, 'no Vault token for either');
    // Control: the very same JWT with the Vault audience logs in, so the audience alone refused it.
    const control = await vaultLogin(await aboutBroker('vault-broker-test'));
    assert.equal(control.status, 200, JSON.stringify(control.body));
    secrets.push(control.body.auth.client_token);
    await bao.api('POST', 'auth/token/revoke-accessor', { accessor: control.body.auth.accessor });
    delete process.env.TEST_JWT_SIGNING_KEY;
  });

  it('logs in with AppRole (deploy/vault/setup.sh approle), secret_id from a file', async () => {
    const d = tempDir('broker-vault-approle-');
    const secretFile = join(d, 'secret-id');
    const setup = await run('bash', [join(DEPLOY, 'setup.sh'), 'approle', secretFile], { env: { ...bao.cliEnv(bao.rootToken), VAULT_CLI: BAO }, timeoutMs: 60_000 });
    assert.equal(setup.code, 0, setup.stderr);
    const roleId = /roleId: (\S+),/.exec(setup.stderr)?.[1];
    assert.ok(roleId, setup.stderr);
    const http = new VaultHttp({ address: bao.url, timeoutMs: 5000 });
    const auth = new VaultAuth({ http, method: { kind: 'approle', roleId, secretId: { file: secretFile }, mount: 'approle' }, baseDir: d, allowRootToken: false, log: createLogger({ level: 'silent' }) });
    const self = await auth.check();
    assert.deepEqual([...self.policies].sort(), ['broker', 'default']);
    const wrong = new VaultAuth({ http, method: { kind: 'approle', roleId: 'nope', secretId: { file: secretFile }, mount: 'approle' }, baseDir: d, allowRootToken: false, log: createLogger({ level: 'silent' }) });
    const e = await wrong.check().catch((x: unknown) => x);
    assert.ok(e instanceof BrokerError && e.code === 'upstream_error', String(e));
    assert.match(e.message, /^Vault refused to log in with AppRole at auth\/approle \(HTTP 400\)/);
    assert.ok(!e.message.includes(readFileSync(secretFile, 'utf8').trim()), 'the secret_id is not in the error');
  });

  it('a service without Vault configured refuses Vault templates with a clear 503', async () => {
    const d = tempDir('broker-novault-');
    const plain = await startServer(configFor(d, undefined), { log: createLogger({ level: 'silent' }) });
    extraServers.push(plain);
    const token = await loginAt(plain.url, 'alice@example.com');
    const r = await call(plain.url, 'POST', '/v1/sessions', token, { template: 'db-migrate' });
    assert.equal(r.status, 503, r.text);
    assert.equal(r.body.code, 'upstream_unavailable');
    assert.match(r.body.message, /grants a Vault token, and this broker service has no Vault configured/);
    const templates = await call(plain.url, 'GET', '/v1/templates', token);
    assert.deepEqual(templates.body.templates.find((t: { name: string }) => t.name === 'db-migrate').grants, ['vault']);
  });

  /** A service of its own against `role`, logging to its own file; stopped with the file's other extras. */
  const roleServer = async (role: string, o: { token?: string; vault?: Record<string, unknown>; port?: number; now?: () => number } = {}) => {
    const d = tempDir('broker-vault-role-');
    const log = join(d, 'service.log');
    const port = o.port ?? 0;
    const srv = await startServer(configFor(d, { address: bao.url, tokenRole: role, token: { env: o.token ?? 'TEST_PROBE_VAULT_TOKEN' }, ...o.vault },
      port ? { listen: { host: '127.0.0.1', port } } : {}), { log: createLogger({ level: 'debug', destination: openSync(log, 'a') }), ...(o.now ? { now: o.now } : {}) });
    extraServers.push(srv);
    return { srv, log, db: join(d, 'broker.db'), token: await loginAt(srv.url, 'alice@example.com') };
  };
  const startAt = async (base: string, token: string, template: string, extra: Record<string, unknown> = {}) => {
    const r = await call(base, 'POST', '/v1/sessions', token, { template, agent: 'claude-code', reason: 'role test', ...extra });
    if (r.body?.vault?.token) secrets.push(r.body.vault.token);
    return r;
  };
  const fixCommand = (role: string) => `bao write auth/token/roles/${role} orphan=true token_explicit_max_ttl=12h`;

  for (const [role, wrong] of [
    ['probe-nonorphan', 'it is not an orphan role'],
    ['probe-nomax', 'it has no token_explicit_max_ttl'],
    ['probe-24h', 'its token_explicit_max_ttl is 24h, above 12h'],
  ] as const) {
    it(`refuses to start against a token role where ${wrong}: one error with the role, what is wrong and the fix; nothing listens`, async () => {
      const port = await freePort();
      const d = tempDir('broker-vault-unsafe-');
      const e = await startServer(configFor(d, { address: bao.url, tokenRole: role, token: { env: 'TEST_PROBE_VAULT_TOKEN' } }, { listen: { host: '127.0.0.1', port } }),
        { log: createLogger({ level: 'silent' }) }).then((s) => { extraServers.push(s); return undefined; }, (x: unknown) => x);
      assert.ok(e instanceof BrokerError, `startServer must reject, got ${String(e)}`);
      assert.equal(e.code, 'invalid_config');
      assert.equal(e.message, `Vault token role "${role}" is unsafe for task tokens: ${wrong}`);
      assert.ok(e.hint?.startsWith(`fix the role: ${fixCommand(role)} (without it Vault lets whoever holds a task token renew it past the end of its task`), e.hint);
      assert.match(e.hint ?? '', /vault\.allowUnsafeTokenRole: true/);
      assert.match(e.details?.[0]?.message ?? '', /^used by the task templates .*db-migrate/);
      await assert.rejects(fetch(`http://127.0.0.1:${port}/healthz`), 'the service closed its port');
    });
  }

  it('the fix in that error, run with the bao CLI, makes the role safe: the service then starts', async () => {
    const fix = fixCommand('probe-nonorphan').split(' ');
    const r = await run(BAO, fix.slice(1), { env: bao.cliEnv(bao.rootToken), timeoutMs: 30_000 });
    assert.equal(r.code, 0, r.stderr);
    const role = (await bao.api('GET', 'auth/token/roles/probe-nonorphan')).body.data;
    assert.deepEqual([role.orphan, role.token_explicit_max_ttl, role.allowed_policies], [true, 43200, ['db-migrate-read']], 'the write changed only those two fields');
    const { srv, token } = await roleServer('probe-nonorphan');
    const s = await startAt(srv.url, token, 'db-migrate');
    assert.equal(s.status, 201, s.text);
    assert.equal((await lookupAccessor(s.body.vault.accessor)).body.data.orphan, true);
    await call(srv.url, 'DELETE', `/v1/sessions/${s.body.session.id}`, token);
  });

  it('vault.allowUnsafeTokenRole: true starts against an unsafe role with a loud warning, and issues', async () => {
    const { srv, log, token } = await roleServer('probe-nomax', { vault: { allowUnsafeTokenRole: true } });
    const warned = logLines(log).filter((l) => l.level === 40 && /^UNSAFE: the token role "probe-nomax" is unsafe for task tokens \(it has no token_explicit_max_ttl\)/.test(l.msg));
    assert.equal(warned.length, 1, readFileSync(log, 'utf8'));
    assert.equal(warned[0]!.fix, fixCommand('probe-nomax'));
    const s = await startAt(srv.url, token, 'db-migrate', { ttl: '15m' });
    assert.equal(s.status, 201, s.text);
    assert.equal((await lookupAccessor(s.body.vault.accessor)).body.data.role, 'probe-nomax');
    assert.ok(logLines(log).some((l) => l.level === 40 && /issuing a task token against the unsafe token role "probe-nomax"/.test(l.msg)), 'and warns when it issues');
    await call(srv.url, 'DELETE', `/v1/sessions/${s.body.session.id}`, token);
  });

  // Vault's behaviour, which the check relies on (it passes with or without the check).
  it('what the check protects: under a role without token_explicit_max_ttl the holder renews a task token far past its session; under the shipped role Vault caps it at 12h from creation', async () => {
    // A task token as the broker asks for one in a 15-minute session (explicit_max_ttl: the time left), against the unsafe role.
    const created = await bao.api('POST', 'auth/token/create/probe-nomax', { policies: ['db-migrate-read'], ttl: 900, explicit_max_ttl: 900, renewable: true },
      process.env.TEST_PROBE_VAULT_TOKEN);
    assert.equal(created.status, 200, JSON.stringify(created.body));
    const loosely = created.body.auth.client_token as string;
    secrets.push(loosely);
    const sessionEnds = Date.now() + 900_000;
    // The agent, holding the token, renews it itself with the bao CLI (renew-self, which Vault's default policy allows).
    const renew = (tok: string) => run(BAO, ['token', 'renew', '-increment=100h', '-format=json'], { env: bao.cliEnv(tok), timeoutMs: 30_000 });
    const loose = await renew(loosely);
    assert.equal(loose.code, 0, loose.stderr);
    assert.equal(JSON.parse(loose.stdout).auth.lease_duration, 100 * 3600, 'renewed for the 100h asked, past its own explicit max TTL of 15 minutes');
    const lookLoose = await run(BAO, ['token', 'lookup', '-format=json'], { env: bao.cliEnv(loosely), timeoutMs: 30_000 });
    const expires = Date.parse(JSON.parse(lookLoose.stdout).data.expire_time);
    assert.ok(expires > sessionEnds + 99 * 3_600_000, `expires ${new Date(expires).toISOString()}, session ends ${new Date(sessionEnds).toISOString()}`);
    assert.equal((await bao.api('POST', 'auth/token/revoke-accessor', { accessor: created.body.auth.accessor })).status, 204);

    const safe = await start('db-migrate', { ttl: '15m' });
    assert.equal(safe.status, 201, safe.text);
    const capped = await renew(safe.body.vault.token);
    assert.equal(capped.code, 0, capped.stderr);
    const out = JSON.parse(capped.stdout);
    assert.ok(out.auth.lease_duration <= 12 * 3600, `capped at 12h: ${out.auth.lease_duration}s`);
    assert.match(JSON.stringify(out.warnings), /exceeded the effective max_ttl/);
    // Still past a 15-minute session: what ends it then is the broker revoking it with its session.
    assert.ok(out.auth.lease_duration > 15 * 60);
    await api('DELETE', `/v1/sessions/${safe.body.session.id}`);
    const after = await run(BAO, ['token', 'lookup'], { env: bao.cliEnv(safe.body.vault.token), timeoutMs: 30_000 });
    assert.match(after.stderr, /permission denied|bad token/);
  });

  it('a token role made unsafe while the service runs: issues stop within the 60 s the verdict is kept (service clock), with a 503 naming the role and the fix; fixed, it issues again at once', async () => {
    let skew = 0;
    const { srv, db, token } = await roleServer('probe-live', { now: () => Date.now() + skew });
    const first = await startAt(srv.url, token, 'db-migrate');
    assert.equal(first.status, 201, first.text);
    const held = first.body.session.id as string;
    // An admin removes the explicit max TTL behind the broker's back.
    assert.equal((await bao.api('POST', 'auth/token/roles/probe-live', { token_explicit_max_ttl: 0 })).status, 204);
    assert.equal((await bao.api('GET', 'auth/token/roles/probe-live')).body.data.token_explicit_max_ttl, 0);
    const cached = await call(srv.url, 'POST', `/v1/sessions/${held}/vault-token`, token);
    assert.equal(cached.status, 200, `within the 60 s the safe verdict is kept: ${cached.text}`);
    secrets.push(cached.body.vault.token);

    skew += 61_000;
    const before = await accessors();
    const refused = await startAt(srv.url, token, 'vault-limited');
    assert.equal(refused.status, 503, refused.text);
    assert.equal(refused.body.code, 'upstream_unavailable');
    assert.equal(refused.body.message, 'Vault token role "probe-live" is unsafe for task tokens (it has no token_explicit_max_ttl); no token is issued');
    assert.equal(refused.body.hint, `an admin fixes the role: ${fixCommand('probe-live')} (without it Vault lets whoever holds a task token renew it past the end of its task); then start the task again`);
    const reissue = await call(srv.url, 'POST', `/v1/sessions/${held}/vault-token`, token);
    assert.equal(reissue.status, 503, reissue.text);
    assert.equal(reissue.body.message, refused.body.message, 'a re-issue under a running session is refused the same way');
    assert.deepEqual(await accessors(), before, 'no token was created');
    assert.deepEqual((await call(srv.url, 'GET', '/v1/sessions', token)).body.sessions.map((x: { id: string }) => x.id), [held], 'the refused start left no session');
    const st = new SqliteStore(db);
    try {
      const failed = (await st.auditLog.records()).filter((x) => x.event.startsWith('vault.') && x.decision === 'failed');
      assert.deepEqual(failed.map((x) => [x.event, x.reason, x.detail?.role, x.detail?.roleCheckRefused]), [
        ['vault.issue', refused.body.message, 'probe-live', true], ['vault.reissue', refused.body.message, 'probe-live', true],
      ]);
      const refusedSession = failed[0]!.sessionId!;
      assert.deepEqual((await st.auditLog.records()).filter((x) => x.sessionId === refusedSession).map((x) => `${x.event}:${x.decision}`),
        ['session.start:allowed', 'vault.issue:failed', 'session.end:ended']);
      assert.equal(await st.auditLog.verify(), null);
    } finally {
      st.close();
    }

    const fix = await run(BAO, fixCommand('probe-live').split(' ').slice(1), { env: bao.cliEnv(bao.rootToken), timeoutMs: 30_000 });
    assert.equal(fix.code, 0, fix.stderr);
    const again = await startAt(srv.url, token, 'vault-limited');
    assert.equal(again.status, 201, `a refusal is not cached: the fixed role issues at once: ${again.text}`);
    await call(srv.url, 'DELETE', `/v1/sessions/${again.body.session.id}`, token);
    await call(srv.url, 'DELETE', `/v1/sessions/${held}`, token);
  });

  it('a token role the broker may not read: it starts with a warning, and issues nothing (503 saying which read to grant)', async () => {
    const { srv, log, token } = await roleServer('probe-noread', { token: 'TEST_NOREAD_VAULT_TOKEN' });
    assert.ok(logLines(log).some((l) => l.level === 40 && l.msg.startsWith('could not read the token role "probe-noread" to check it; no token is issued against it until it can be')),
      readFileSync(log, 'utf8'));
    const before = await accessors();
    const r = await startAt(srv.url, token, 'db-migrate');
    assert.equal(r.status, 503, r.text);
    assert.equal(r.body.code, 'upstream_unavailable');
    assert.equal(r.body.message, 'could not check Vault token role "probe-noread" (Vault answered 403 to reading it); no token is issued');
    assert.equal(r.body.hint, 'the broker\'s own Vault policy must allow "read" on auth/token/roles/probe-noread (deploy/vault/broker-policy.hcl)');
    assert.deepEqual(await accessors(), before, 'no token was created, though the broker could have');
    // The shipped broker policy grants that read for the shipped role.
    assert.match(readFileSync(join(DEPLOY, 'broker-policy.hcl'), 'utf8'), /path "auth\/token\/roles\/broker-tasks" \{\s*capabilities = \["read"\]\s*\}/);
  });

  it('Vault unreachable at start: the service starts, and checks the role before the first token is issued', async () => {
    const port = await freePort();
    const d = tempDir('broker-vault-late-');
    const log = join(d, 'service.log');
    const srv = await startServer(configFor(d, { address: `http://127.0.0.1:${port}`, tokenRole: 'probe-nomax', token: { env: 'TEST_PROBE_VAULT_TOKEN' } }),
      { log: createLogger({ level: 'debug', destination: openSync(log, 'a') }) });
    extraServers.push(srv);
    assert.ok(logLines(log).some((l) => l.level === 40 && /^Vault is not usable yet/.test(l.msg)), readFileSync(log, 'utf8'));
    // Vault "comes up" at that address: a TCP relay to OpenBao.
    const sockets = new Set<Socket>();
    const relay = createTcpServer((c) => {
      const u = connect(bao.port, '127.0.0.1');
      for (const x of [c, u]) { sockets.add(x); x.on('error', () => { c.destroy(); u.destroy(); }); x.on('close', () => sockets.delete(x)); }
      c.pipe(u).pipe(c);
    });
    await new Promise<void>((r) => relay.listen(port, '127.0.0.1', r));
    try {
      const token = await loginAt(srv.url, 'alice@example.com');
      const before = await accessors();
      const r = await startAt(srv.url, token, 'db-migrate');
      assert.equal(r.status, 503, r.text);
      assert.equal(r.body.message, 'Vault token role "probe-nomax" is unsafe for task tokens (it has no token_explicit_max_ttl); no token is issued');
      assert.deepEqual(await accessors(), before);
    } finally {
      for (const x of sockets) x.destroy();
      await new Promise<void>((r) => relay.close(() => r()));
    }
  });

  it("warns at start about a template asking for policies outside the token role's allowed_policies", () => {
    const lines = logLines(logFile).filter((l) => l.level === 40 && l.template === 'vault-outside');
    assert.deepEqual(lines.map((l) => [l.msg, l.policies]), [
      ['template "vault-outside" asks for policies outside the allowed_policies of role "broker-tasks"; starting it fails until one of them changes', ['kv-other']],
    ]);
  });

  it('no token in any file, the service log or the SQLite store', () => {
    assert.ok(secrets.length >= 10, `${secrets.length} secrets collected`);
    assert.deepEqual(filesContaining([dir, tmpdir()], secrets), []);
    const log = readFileSync(logFile, 'utf8');
    assert.ok(log.includes('vaultAccessor'), 'accessors are logged');
  });
});

describe('vault service configuration', () => {
  const base = {
    oidc: { issuer: 'https://idp.example.com', audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli' },
    tokens: { signingKeys: 'ephemeral' },
  };
  const problems = (vault: unknown): string[] => {
    try {
      parseServerConfig({ ...base, vault }, '/tmp', 'broker.yaml');
    } catch (e) {
      assert.ok(e instanceof BrokerError && e.code === 'invalid_config');
      return (e.details ?? []).map((d) => `${d.path}: ${d.message}`);
    }
    return [];
  };

  it('needs exactly one login method, a token role, and https off loopback', () => {
    assert.deepEqual(problems({ address: 'https://vault.example.com', tokenRole: 'broker-tasks', token: { env: 'T' } }), []);
    assert.deepEqual(problems({ address: 'https://vault.example.com', tokenRole: 'broker-tasks' }),
      ["broker.yaml:vault: set the broker's own Vault login: one of token: {file|env}, approle: {roleId, secretId}, jwt: {role, audience}"]);
    assert.deepEqual(problems({ address: 'https://vault.example.com', tokenRole: 'broker-tasks', token: { env: 'T' }, jwt: { role: 'r', audience: 'a' } }),
      ['broker.yaml:vault: set exactly one of token, approle, jwt (found token, jwt)']);
    assert.match(problems({ address: 'http://vault.example.com:8200', tokenRole: 'broker-tasks', token: { env: 'T' } }).join('\n'), /vault\.address: plain http/);
    assert.deepEqual(problems({ address: 'http://127.0.0.1:8200', tokenRole: 'broker-tasks', token: { env: 'T' } }), []);
    assert.match(problems({ address: 'https://v', tokenRole: 'bad role', token: { env: 'T' } }).join('\n'), /vault\.tokenRole: must be a Vault token role name/);
    assert.match(problems({ address: 'https://v', tokenRole: 'r', jwt: { role: 'r', audience: 'agent-credential-broker' } }).join('\n'), /vault\.jwt\.audience: must differ/);
    assert.match(problems({ address: 'https://v', tokenRole: 'r', token: 's.abcdef' }).join('\n'), /vault\.token/);
  });

  it('accepts allowRootToken only for a Vault on loopback (a local dev server)', () => {
    const dev = { tokenRole: 'broker-tasks', token: { env: 'T' }, allowRootToken: true };
    for (const address of ['http://127.0.0.1:8200', 'http://[::1]:8200', 'https://127.0.0.2:8200']) {
      assert.deepEqual(problems({ ...dev, address }), [], address);
    }
    for (const address of ['https://vault.example.com:8200', 'https://10.0.0.5:8200', 'https://127.0.0.1.nip.io:8200']) {
      assert.deepEqual(problems({ ...dev, address }), [
        `broker.yaml:vault.allowRootToken: is only accepted for a Vault on loopback (a local dev server), and vault.address is ${new URL(address).host}; give the broker a login with only deploy/vault/broker-policy.hcl (jwt or approle) and remove allowRootToken`,
      ], address);
    }
    // localhost can resolve to another machine: not loopback (broker/limits/urls.ts).
    assert.deepEqual(problems({ ...dev, address: 'https://localhost:8200' }), [
      'broker.yaml:vault.allowRootToken: is only accepted for a Vault on loopback (a local dev server), and vault.address is localhost:8200 (localhost does not count: write 127.0.0.1); give the broker a login with only deploy/vault/broker-policy.hcl (jwt or approle) and remove allowRootToken',
    ]);
    assert.deepEqual(problems({ ...dev, address: 'https://vault.example.com:8200', allowRootToken: false }), []);
  });

  it('accepts allowUnsafeTokenRole only for a Vault on loopback (a local dev server)', () => {
    const dev = { tokenRole: 'broker-tasks', token: { env: 'T' }, allowUnsafeTokenRole: true };
    for (const address of ['http://127.0.0.1:8200', 'http://[::1]:8200']) {
      assert.deepEqual(problems({ ...dev, address }), [], address);
    }
    for (const address of ['https://vault.example.com:8200', 'https://10.0.0.5:8200', 'https://localhost:8200']) {
      assert.deepEqual(problems({ ...dev, address }), [
        `broker.yaml:vault.allowUnsafeTokenRole: is only accepted for a Vault on loopback (a local dev server), and vault.address is ${new URL(address).host}${address.includes('localhost') ? ' (localhost does not count: write 127.0.0.1)' : ''}; make the token role safe (bao write auth/token/roles/<role> orphan=true token_explicit_max_ttl=12h) and remove allowUnsafeTokenRole`,
      ], address);
    }
    assert.deepEqual(problems({ ...dev, address: 'https://vault.example.com:8200', allowUnsafeTokenRole: false }), []);
  });
});

describe('the audit log of a store from before Vault support', () => {
  it('gains the accessor column, and old and new records verify in one chain', async () => {
    const d = tempDir('broker-oldstore-');
    const path = join(d, 'broker.db');
    // The audit table as it was, with one record hashed the way it was.
    const db = new DatabaseSync(path);
    db.exec(`CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, event TEXT NOT NULL, decision TEXT NOT NULL,
      developer TEXT, template TEXT, session_id TEXT, reason TEXT, access_key_id TEXT, role_session_name TEXT, expiration TEXT,
      detail TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)`);
    const at = '2026-11-01T00:00:00.000Z';
    const prev = '0'.repeat(64);
    const hash = createHash('sha256').update(JSON.stringify([prev, at, 'login', 'allowed', 'alice@example.com', null, null, null, null, null, null, null])).digest('hex');
    db.prepare('INSERT INTO audit (at, event, decision, developer, prev_hash, hash) VALUES (?,?,?,?,?,?)').run(at, 'login', 'allowed', 'alice@example.com', prev, hash);
    db.close();

    const s = new SqliteStore(path);
    assert.equal((await s.auditLog.verify()), null, 'the old record still verifies');
    await s.auditLog.append({ event: 'vault.revoke', decision: 'revoked', developer: 'alice@example.com', vaultAccessor: 'acc123' });
    assert.equal((await s.auditLog.verify()), null);
    assert.equal((await s.auditLog.records()).at(-1)?.vaultAccessor, 'acc123');
    s.close();
    // Tampering with the accessor breaks the chain like any other field.
    const raw = new DatabaseSync(path);
    raw.exec('DROP TRIGGER audit_no_update');
    raw.exec("UPDATE audit SET vault_accessor = 'other' WHERE seq = 2");
    raw.close();
    const again = new SqliteStore(path);
    assert.equal((await again.auditLog.verify()), 2);
    again.close();
  });
});

describe('the Vault token table of a store from before dead-by tracking', () => {
  it('gains the new columns; an old failing row is given up only after Vault\'s default max TTL', async () => {
    const d = tempDir('broker-oldvault-');
    const path = join(d, 'broker.db');
    const db = new DatabaseSync(path);
    db.exec(`CREATE TABLE task_sessions (id TEXT PRIMARY KEY, developer TEXT NOT NULL, template TEXT NOT NULL, params TEXT NOT NULL,
      reason TEXT NOT NULL, agent TEXT NOT NULL, role_session_name TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
      ended_at INTEGER, end_reason TEXT);
      CREATE TABLE vault_tokens (accessor TEXT PRIMARY KEY, session_id TEXT NOT NULL REFERENCES task_sessions (id), created_at INTEGER NOT NULL,
      expires_at INTEGER NOT NULL, revoked_at INTEGER, revoke_attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);`);
    const created = Date.UTC(2026, 10, 1);
    db.prepare('INSERT INTO task_sessions VALUES (?,?,?,?,?,?,?,?,?,?,?)').run('oldsess001', 'alice@example.com', 'db-migrate', '{}', '', 'x', 'n', created, created + 3_600_000, created + 60_000, 'ended by developer');
    db.prepare('INSERT INTO vault_tokens (accessor, session_id, created_at, expires_at, revoke_attempts, last_error) VALUES (?,?,?,?,?,?)').run('acc-old', 'oldsess001', created, created + 3_600_000, 3, 'unreachable');
    db.close();

    const s = new SqliteStore(path);
    const [row] = (await s.vaultTokens.toRevoke());
    assert.deepEqual([row?.accessor, row?.deadBy, row?.lastAttemptAt, row?.lapsedAt, row?.revokeAttempts], ['acc-old', null, null, null, 3]);
    const fallback = 768 * 3_600_000;
    assert.deepEqual((await s.vaultTokens.pastDeadBy(created + fallback - 1, fallback)), [], 'its own explicit max TTL is not trusted: it may have been renewed');
    assert.deepEqual((await s.vaultTokens.pastDeadBy(created + fallback, fallback)).map((r) => r.accessor), ['acc-old']);
    s.close();
  });
});
