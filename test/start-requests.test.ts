/**
 * Start requests and human confirmation (README, "Confirmation"): the service in-process over real
 * HTTP, the real IdP (oidc-provider) for device confirmations, moto as STS. Decisions that need a
 * crafted ID token (an old auth_time, a replayed token) go to the domain (StartRequests.decide)
 * with tokens signed by the IdP's own key, since the API never takes an ID token for a decision.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse, stringify } from 'yaml';
import { STSClient } from '@aws-sdk/client-sts';
import { parseServerConfig } from '../broker/config/server-config.js';
import { IdTokenVerifier } from '../broker/identity/id-token-verifier.js';
import { createLogger } from '../broker/log.js';
import { StsCredentialIssuer } from '../broker/aws/sts-issuer.js';
import { StartRequests, type FreshLogin } from '../broker/requests/start-requests.js';
import { startServer, type RunningServer } from '../broker/server/start.js';
import { TaskSessionService } from '../broker/sessions/task-session-service.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { TemplateCatalog } from '../broker/templates/catalog.js';
import { loadTemplatesOrThrow } from '../broker/templates/load.js';
import { startIdp, type TestIdp } from './peers/idp.js';
import { startMoto } from './peers/moto.js';
import { POLICIES_DIR } from './peers/paths.js';

const USERS = [
  { email: 'alice@example.com', name: 'Alice', groups: ['developers'] },
  { email: 'bob@example.com', name: 'Bob', groups: ['contractors'] },
  { email: 'carol@example.com', name: 'Carol', groups: ['developers', 'admins'] },
  { email: 'erin@example.com', name: 'Erin', groups: ['developers', 'admins'] },
];

/** The shipped deploy-lambda and read-cloudwatch-logs, and two-person (deploy-lambda with approvers: 2 admins, break-glass). */
function policies(): string {
  const dir = join(mkdtempSync(join(tmpdir(), 'broker-req-')), 'policies');
  mkdirSync(dir);
  for (const n of ['deploy-lambda', 'read-cloudwatch-logs']) copyFileSync(join(POLICIES_DIR, `${n}.yaml`), join(dir, `${n}.yaml`));
  const t = parse(readShipped('deploy-lambda')) as Record<string, unknown>;
  t.name = 'two-person';
  t.confirm = { mode: 'approvers', approvers: { groups: ['admins'] }, approvals: 2, breakGlass: true };
  writeFileSync(join(dir, 'two-person.yaml'), stringify(t));
  return dir;
}
function readShipped(n: string): string {
  return readFileSync(join(POLICIES_DIR, `${n}.yaml`), 'utf8');
}

type Res = { status: number; body: any; text: string; headers: Headers };

describe('start requests and human confirmation', () => {
  let moto: Awaited<ReturnType<typeof startMoto>>;
  let idp: TestIdp;
  let server: RunningServer;
  let dbPath: string;
  const tokens: Record<string, string> = {};
  let offset = 0;
  const clock = () => Date.now() + offset;

  const call = async (method: string, path: string, token?: string, body?: unknown): Promise<Res> => {
    const res = await fetch(`${server.url}${path}`, {
      method, headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined, text, headers: res.headers };
  };
  const audit = async () => {
    const s = new SqliteStore(dbPath);
    try { return await s.auditLog.records(0, 100_000); } finally { await s.close(); }
  };
  const deploy = { template: 'deploy-lambda', params: { function: 'checkout' }, reason: 'fix the bug', agent: 'claude-code' };

  /** Decides through the terminal path: the service's device authorization, approved at the IdP as `email`. */
  const decideByDevice = async (who: string, id: string, email: string, decision: string, reason = ''): Promise<Res> => {
    const started = await call('POST', `/v1/requests/${id}/confirmations`, tokens[who], { decision, reason });
    assert.equal(started.status, 201, started.text);
    assert.equal(started.text.includes('device_code'), false, 'the device code stays in the service');
    await idp.approveDevice(started.body.confirmation.user_code, email);
    for (let i = 0; i < 40; i++) {
      const r = await call('GET', `/v1/requests/${id}/confirmations/${started.body.confirmation.id}`, tokens[who]);
      if (r.status !== 200 || r.body.status !== 'pending') return r;
      await new Promise((res) => setTimeout(res, 300));
    }
    throw new Error('confirmation never finished');
  };

  before(async () => {
    moto = await startMoto();
    idp = await startIdp({ users: USERS });
    process.env.AWS_ACCESS_KEY_ID = 'testing';
    process.env.AWS_SECRET_ACCESS_KEY = 'testing';
    const dir = mkdtempSync(join(tmpdir(), 'broker-req-svc-'));
    dbPath = join(dir, 'broker.db');
    const config = parseServerConfig({
      listen: { host: '127.0.0.1', port: 0 }, policiesDir: policies(), store: { sqlite: dbPath },
      oidc: { issuer: idp.issuer, audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli', scopes: 'openid email profile groups', allowInsecureHttp: true },
      tokens: { signingKeys: 'ephemeral' },
      aws: { region: 'us-east-1', stsEndpoint: moto.url, iamEndpoint: moto.url, checkTrustAtStartup: false },
      confirm: { default: 'self', maxAge: '5m', timeout: '15m' },
      limits: { issuePerMinute: 500 },
      sweeper: { interval: 3600 },
    }, dir);
    server = await startServer(config, { log: createLogger({ level: 'silent' }), now: clock });
    for (const u of USERS) {
      const r = await call('POST', '/v1/auth/token', undefined, { id_token: await idp.loginAs(u.email) });
      assert.equal(r.status, 200, r.text);
      tokens[u.email.split('@')[0]!] = r.body.access_token;
    }
  });
  after(async () => {
    await server?.stop();
    await idp?.stop();
    await moto?.stop();
  });

  it('answers an unconfirmed start with 401 and the RFC 9470 challenge, and a new pending request (once per digest)', async () => {
    const r = await call('POST', '/v1/sessions', tokens.alice, deploy);
    assert.equal(r.status, 401, r.text);
    assert.equal(r.headers.get('www-authenticate'),
      `Bearer error="insufficient_user_authentication", error_description="${r.body.message.replace(/"/g, '')}", max_age=300`);
    assert.equal(r.body.code, 'confirmation_required');
    assert.equal(r.body.request.status, 'pending');
    assert.equal(r.body.request.requester, 'alice@example.com');
    assert.equal(r.body.credentials, undefined);
    const again = await call('POST', '/v1/sessions', tokens.alice, deploy);
    assert.equal(again.body.request.id, r.body.request.id, 'the same pending request, not a duplicate');
    const rows = (await audit()).filter((a) => a.event === 'request.create' && a.detail?.request === r.body.request.id);
    assert.equal(rows.length, 1);
    assert.equal(rows[0]!.decision, 'pending');
    assert.equal(rows[0]!.developer, 'alice@example.com');
    assert.equal(rows[0]!.detail?.agent, 'claude-code');
  });

  it('starts directly for mode none (read-cloudwatch-logs)', async () => {
    const r = await call('POST', '/v1/sessions', tokens.alice, { template: 'read-cloudwatch-logs', params: { logGroup: '/aws/lambda/checkout' }, reason: 'incident', agent: 'a' });
    assert.equal(r.status, 201, r.text);
    assert.ok(r.body.credentials.AccessKeyId);
  });

  it('confirms with a device login at the IdP, then starts with confirmedRequest; the session clock starts at the start; once only', async () => {
    const body = { ...deploy, params: { function: 'payments' } };
    const asked = await call('POST', '/v1/sessions', tokens.alice, body);
    const id = asked.body.request.id as string;
    const early = await call('POST', '/v1/sessions', tokens.alice, { ...body, confirmedRequest: id });
    assert.equal(early.status, 409, 'not confirmed yet');
    const done = await decideByDevice('alice', id, 'alice@example.com', 'confirm');
    assert.equal(done.status, 200, done.text);
    assert.equal(done.body.status, 'done');
    assert.equal(done.body.request.status, 'confirmed');
    assert.equal(done.text.includes('eyJ'), false, 'no token in the answer');
    const other = await call('POST', '/v1/sessions', tokens.alice, { ...body, params: { function: 'other' }, confirmedRequest: id });
    assert.equal(other.status, 409, 'other parameters: digest mismatch');
    assert.match(other.body.message, /other parameters/);
    const bob = await call('POST', '/v1/sessions', tokens.carol, { ...body, confirmedRequest: id });
    assert.equal(bob.status, 404, 'only the requester starts it');
    offset = 120_000; // two minutes after the request
    const t0 = clock();
    const started = await call('POST', '/v1/sessions', tokens.alice, { ...body, confirmedRequest: id });
    offset = 0;
    assert.equal(started.status, 201, started.text);
    assert.ok(started.body.credentials.AccessKeyId);
    const expiresAt = Date.parse(started.body.session.expiresAt);
    assert.ok(Math.abs(expiresAt - (t0 + 8 * 3600_000)) < 5000, 'the 8h counts from the start, not the request');
    const twice = await call('POST', '/v1/sessions', tokens.alice, { ...body, confirmedRequest: id });
    assert.equal(twice.status, 409, 'a confirmed request starts once');
    const view = await call('GET', `/v1/requests/${id}`, tokens.alice);
    assert.equal(view.body.request.status, 'started');
    assert.equal(view.body.request.sessionId, started.body.session.id);
    const rows = await audit();
    const start = rows.find((a) => a.event === 'session.start' && a.decision === 'allowed' && a.detail?.request === id);
    assert.deepEqual(start?.detail?.confirmedBy, ['alice@example.com']);
    const confirm = rows.find((a) => a.event === 'request.confirm' && a.decision === 'confirmed' && a.detail?.request === id);
    assert.equal(confirm?.detail?.by, 'alice@example.com');
    assert.equal(JSON.stringify(rows).includes('eyJ'), false, 'no token in the audit log');
    await call('DELETE', `/v1/sessions/${started.body.session.id}`, tokens.alice);
  });

  it('a login older than maxAge is a step-up challenge (RFC 9470), not a bad token; nothing is spent and a new IdP login decides', async () => {
    const id = (await call('POST', '/v1/sessions', tokens.alice, { ...deploy, params: { function: 'stale' } })).body.request.id as string;
    const started = await call('POST', `/v1/requests/${id}/confirmations`, tokens.alice, { decision: 'confirm', reason: '' });
    await idp.approveDevice(started.body.confirmation.user_code, 'alice@example.com');
    // The service's clock 400 s ahead of the IdP's: the login it gets is older than maxAge (300 s).
    offset = 400_000;
    let stale: Res;
    try {
      for (;;) {
        stale = await call('GET', `/v1/requests/${id}/confirmations/${started.body.confirmation.id}`, tokens.alice);
        if (stale.status !== 200 || stale.body.status !== 'pending') break;
        await new Promise((res) => setTimeout(res, 300));
      }
    } finally {
      offset = 0;
    }
    assert.equal(stale.status, 401, stale.text);
    assert.equal(stale.headers.get('www-authenticate'),
      `Bearer error="insufficient_user_authentication", error_description="${stale.body.message.replace(/"/g, '')}", max_age=300`);
    assert.equal(stale.body.code, 'confirmation_required');
    assert.match(stale.body.message, /not fresh enough .* older than 300s/);
    assert.equal(stale.body.request.status, 'pending', 'the request still waits');
    const refused = (await audit()).filter((a) => a.event === 'request.confirm' && a.detail?.request === id);
    assert.deepEqual(refused.map((a) => a.decision), ['denied'], 'the refusal is audited');
    const fresh = await decideByDevice('alice', id, 'alice@example.com', 'confirm');
    assert.equal(fresh.status, 200, fresh.text);
    assert.equal(fresh.body.request.status, 'confirmed', 'a new login at the IdP confirms the same request');
  });

  it('approvers: 202; the requester cannot approve; a non-approver gets 403; two different approvers are needed', async () => {
    const body = { ...deploy, template: 'two-person' };
    const asked = await call('POST', '/v1/sessions', tokens.alice, body);
    assert.equal(asked.status, 202, asked.text);
    assert.equal(asked.headers.get('www-authenticate'), null);
    const id = asked.body.request.id as string;
    assert.equal((await call('GET', `/v1/requests/${id}`, tokens.bob)).status, 404, 'a stranger does not see it');
    const list = await call('GET', '/v1/requests?for=approver', tokens.carol);
    assert.ok(list.body.requests.some((r: any) => r.id === id));
    const self = await decideByDevice('alice', id, 'alice@example.com', 'approve');
    assert.equal(self.status, 403, self.text);
    const stranger = await decideByDevice('alice', id, 'bob@example.com', 'approve');
    assert.equal(stranger.status, 403, 'bob is no approver');
    assert.equal((await decideByDevice('alice', id, 'alice@example.com', 'confirm')).body.request.status, 'pending');
    assert.equal((await decideByDevice('carol', id, 'carol@example.com', 'approve')).body.request.status, 'pending');
    const dup = await decideByDevice('carol', id, 'carol@example.com', 'approve');
    assert.equal(dup.status, 409, 'each approver counts once');
    const second = await decideByDevice('carol', id, 'erin@example.com', 'approve');
    assert.equal(second.body.request.status, 'confirmed', 'confirmed with two distinct approvers');
    const rows = (await audit()).filter((a) => a.detail?.request === id);
    assert.ok(rows.some((a) => a.event === 'request.approve' && a.decision === 'approved' && a.detail?.by === 'erin@example.com'));
    assert.ok(rows.some((a) => a.event === 'request.approve' && a.decision === 'denied' && a.detail?.by === 'alice@example.com'));
  });

  it('deny is final; cancel by the requester; an expired request takes no decision', async () => {
    const denied = (await call('POST', '/v1/sessions', tokens.alice, { ...deploy, template: 'two-person', params: { function: 'd1' } })).body.request.id;
    const d = await decideByDevice('carol', denied, 'carol@example.com', 'deny', 'not now');
    assert.equal(d.body.request.status, 'denied');
    assert.equal((await call('POST', `/v1/requests/${denied}/confirmations`, tokens.alice, { decision: 'confirm' })).status, 409, 'denied is final');
    const cancelled = (await call('POST', '/v1/sessions', tokens.alice, { ...deploy, params: { function: 'c1' } })).body.request.id;
    assert.equal((await call('DELETE', `/v1/requests/${cancelled}`, tokens.carol)).status, 404);
    const c = await call('DELETE', `/v1/requests/${cancelled}`, tokens.alice);
    assert.equal(c.body.request.status, 'cancelled');
    const expiring = (await call('POST', '/v1/sessions', tokens.alice, { ...deploy, params: { function: 'e1' } })).body.request.id;
    const started = await call('POST', `/v1/requests/${expiring}/confirmations`, tokens.alice, { decision: 'confirm' });
    await idp.approveDevice(started.body.confirmation.user_code, 'alice@example.com');
    offset = 16 * 60_000; // past the 15m timeout
    await new Promise((r) => setTimeout(r, 1100));
    const late = await call('GET', `/v1/requests/${expiring}/confirmations/${started.body.confirmation.id}`, tokens.alice);
    offset = 0;
    // The device code has expired too by then; either way the request is not confirmed.
    assert.ok(late.status === 409 || late.body.status === 'expired', late.text);
    assert.equal((await call('GET', `/v1/requests/${expiring}`, tokens.alice)).body.request.status, 'pending');
    const rows = await audit();
    assert.ok(rows.some((a) => a.event === 'request.cancel' && a.decision === 'cancelled' && a.detail?.request === cancelled));
    assert.ok(rows.some((a) => a.event === 'request.deny' && a.decision === 'denied' && a.reason === 'not now' && a.detail?.request === denied));
  });

  it('break-glass: needs a reason and the template opt-in, the requester alone confirms, audited as its own event', async () => {
    const noReason = await call('POST', '/v1/sessions', tokens.alice, { ...deploy, template: 'two-person', reason: '', breakGlass: true });
    assert.equal(noReason.status, 400, noReason.text);
    const notAllowed = await call('POST', '/v1/sessions', tokens.alice, { ...deploy, breakGlass: true });
    assert.equal(notAllowed.status, 403, notAllowed.text);
    const r = await call('POST', '/v1/sessions', tokens.alice, { ...deploy, template: 'two-person', params: { function: 'bg' }, reason: 'prod is down', breakGlass: true });
    assert.equal(r.status, 401, r.text);
    assert.equal(r.body.request.breakGlass, true);
    const done = await decideByDevice('alice', r.body.request.id, 'alice@example.com', 'confirm');
    assert.equal(done.body.request.status, 'confirmed');
    const rows = await audit();
    assert.ok(rows.some((a) => a.event === 'request.break_glass' && a.decision === 'pending' && a.reason === 'prod is down' && a.detail?.request === r.body.request.id));
  });

  describe('the decision rules on crafted ID tokens (domain)', () => {
    let requests: StartRequests;
    let verifier: IdTokenVerifier;
    let store: SqliteStore;
    let domainOffset = 0;
    before(async () => {
      store = new SqliteStore(join(mkdtempSync(join(tmpdir(), 'broker-req-dom-')), 'b.db'));
      const templates = new TemplateCatalog(loadTemplatesOrThrow(policies()));
      const log = createLogger({ level: 'silent' });
      const sessions = new TaskSessionService({ store, templates, issuer: new StsCredentialIssuer(new STSClient({ region: 'us-east-1', endpoint: moto.url }), 8000), log, maxActiveSessions: 20 });
      requests = new StartRequests({ store, templates, sessions, log, now: () => Date.now() + domainOffset, publicUrl: () => 'http://127.0.0.1:1', defaults: { mode: 'self', maxAgeSeconds: 300, timeoutSeconds: 900 } });
      verifier = new IdTokenVerifier({
        issuer: idp.issuer, audience: 'broker-cli', algorithms: ['RS256'], groupsClaim: 'groups', identityClaim: 'email', clockToleranceSeconds: 5,
        authorizedParty: 'broker-cli', maxAgeSeconds: 600, seen: store.seenIdTokens,
      });
    });
    after(async () => { await store?.close(); });
    const alice = { id: 'alice@example.com', email: 'alice@example.com', groups: ['developers'] };
    const login = async (token: string, loginStartedAt = Date.now() - 1000): Promise<FreshLogin> => ({ token: await verifier.verify(token), loginStartedAt, via: 'device' });
    const tokenWith = (authSecondsAgo: number | undefined) => idp.issueIdToken('alice@example.com', {
      claims: { auth_time: authSecondsAgo === undefined ? undefined : Math.floor(Date.now() / 1000) - authSecondsAgo, jti: randomUUID() },
    });

    it('refuses an auth_time older than maxAge, before the request, or missing', async () => {
      const r = (await requests.ask(alice, { ...deploy, params: { function: 'old' } }))!;
      // A login after the request was made, but 400 s before the decision (maxAge 300 s).
      domainOffset = 400_000;
      try {
        await assert.rejects(requests.decide(r.id, await login(await tokenWith(0)), 'confirm', ''), /older than 300s/);
      } finally {
        domainOffset = 0;
      }
      await assert.rejects(requests.decide(r.id, await login(await tokenWith(400)), 'confirm', ''), /before the request was made/);
      await assert.rejects(requests.decide(r.id, await login(await tokenWith(undefined)), 'confirm', ''), /no auth_time/);
      const ok = await requests.decide(r.id, await login(await tokenWith(0)), 'confirm', '');
      assert.equal(ok.status, 'confirmed');
    });

    it('refuses the same ID token for a second request', async () => {
      const a = (await requests.ask(alice, { ...deploy, params: { function: 'r1' } }))!;
      const b = (await requests.ask(alice, { ...deploy, params: { function: 'r2' } }))!;
      const token = await tokenWith(0);
      await requests.decide(a.id, await login(token), 'confirm', '');
      await assert.rejects(requests.decide(b.id, await login(token), 'confirm', ''), /already used/);
    });

    it('refuses a decision on an expired request, and the sweeper expiry audits it', async () => {
      const r = (await requests.ask(alice, { ...deploy, params: { function: 'x1' } }))!;
      domainOffset = 16 * 60_000;
      try {
        await assert.rejects(requests.decide(r.id, await login(await tokenWith(0)), 'confirm', ''), /expired: it takes no decisions/);
        assert.equal((await requests.expire()).some((e) => e.id === r.id), true);
      } finally {
        domainOffset = 0;
      }
      const rows = await store.auditLog.records(0, 10_000);
      assert.ok(rows.some((a) => a.event === 'request.expire' && a.decision === 'expired' && a.detail?.request === r.id));
    });

    it('maxAge 0 needs a login begun for this decision', async () => {
      const r = (await requests.ask(alice, { ...deploy, params: { function: 'z0' } }))!;
      const zero = { ...r, maxAgeSeconds: 0 };
      // Same request with maxAge 0, as a template with confirm.maxAge: 0 makes it.
      (store as any).sql.db.prepare('UPDATE start_requests SET max_age_seconds = 0 WHERE id = ?').run(zero.id);
      await assert.rejects(requests.decide(r.id, await login(await tokenWith(0), Date.now() + 10_000), 'confirm', ''), /maxAge 0|not fresh/);
      assert.equal((await requests.decide(r.id, await login(await tokenWith(0), Date.now() - 1000), 'confirm', '')).status, 'confirmed');
    });
  });
});

describe('the confirm configuration', () => {
  const base = { oidc: { issuer: 'https://idp.example.com', audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli' }, tokens: { signingKeys: 'ephemeral' } };
  it('defaults to self, 5m, 15m and the broker-web page client', () => {
    const c = parseServerConfig(base, tmpdir());
    assert.deepEqual(c.confirm, { default: 'self', maxAge: 300, timeout: 900 });
    assert.equal(c.oidc.webClientId, 'broker-web');
  });
  it('names the file, field and fix of a bad value', () => {
    try {
      parseServerConfig({ ...base, confirm: { default: 'sometimes', maxAge: '2d', timeout: '10s' } }, tmpdir(), 'broker.yaml');
      assert.fail('accepted');
    } catch (e) {
      const lines = (e as { details: { path: string; message: string }[] }).details.map((d) => `${d.path}: ${d.message}`);
      assert.deepEqual(lines, [
        'broker.yaml:confirm.default: must be none, self or approvers',
        'broker.yaml:confirm.maxAge: must be at most 1d (a confirmation proves a human now; e.g. 5m, or 0 for a fresh login)',
        'broker.yaml:confirm.timeout: must be between 1m and 7d, e.g. 15m',
      ]);
    }
  });
});
