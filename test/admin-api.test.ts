/**
 * The control plane's API (`/v1/admin/*`), with the service in-process over real HTTP, the real IdP
 * (oidc-provider) for every login and moto behind a recording proxy as STS: every admin route
 * refuses a non-admin (the table is the app's own route list), every action needs a reason and is
 * audited with the admin, ends and freezes are kept in the store and refuse re-issue and starts,
 * and the seam to STS revocation is called with what was issued.
 */
import { GetRolePolicyCommand } from '@aws-sdk/client-iam';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { StsRevoker } from '../broker/admin/admin-service.js';
import type { RevocationWarning, SessionToRevoke } from '../broker/sessions/session-revocations.js';
import { parseServerConfig } from '../broker/config/server-config.js';
import { createLogger } from '../broker/log.js';
import { startServer, type RunningServer } from '../broker/server/start.js';
import type { AuditRecord } from '../broker/store/audit-event.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { DEFAULT_USERS, startIdp } from './peers/idp.js';
import { createRole, motoIamClient, startMoto } from './peers/moto.js';
import { POLICIES_DIR } from './peers/paths.js';
import { startRecordingProxy } from './peers/recording-proxy.js';
import { TEST_ROLES } from './peers/stack.js';

type Reply = { status: number; body: any; text: string };

const TRUST = JSON.stringify({
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
});

describe('admin API (/v1/admin/*)', () => {
  let moto: Awaited<ReturnType<typeof startMoto>>;
  let proxy: Awaited<ReturnType<typeof startRecordingProxy>>;
  let idp: Awaited<ReturnType<typeof startIdp>>;
  let server: RunningServer;
  let dbPath: string;
  const revoked: { sessions: SessionToRevoke[]; by: { admin: string; reason: string } }[] = [];
  // What the revoker reports to admins; the real warnings() is tested in test/session-revocations.test.ts.
  let warnings: RevocationWarning[] = [];
  const recorder: StsRevoker = { revokeSessions: async (sessions, by) => { revoked.push({ sessions, by }); }, warnings: async () => warnings };
  const tokens: Record<string, string> = {};

  const call = async (method: string, path: string, who?: string, body?: unknown): Promise<Reply> => {
    const res = await fetch(`${server.url}${path}`, {
      method,
      headers: { 'content-type': 'application/json', ...(who ? { authorization: `Bearer ${tokens[who]}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: JSON.parse(text), text };
  };
  const audit = async (): Promise<AuditRecord[]> => {
    const s = new SqliteStore(dbPath);
    try { return await s.auditLog.records(0, 100_000); } finally { await s.close(); }
  };
  const startDeploy = async (who: string, fn: string, agent = 'claude-code') => {
    const r = await call('POST', '/v1/sessions', who, { template: 'deploy-lambda', params: { function: fn }, reason: `work on ${fn}`, agent });
    assert.equal(r.status, 201, r.text);
    return r.body as { session: { id: string }; credentials: { AccessKeyId: string; Expiration: string } };
  };
  const endAll = (who: string) => call('POST', '/v1/admin/sessions/end', 'carol', { developer: who, reason: 'clean slate for the next test' });

  before(async () => {
    moto = await startMoto();
    proxy = await startRecordingProxy(moto.url);
    idp = await startIdp({ users: [...DEFAULT_USERS, { email: 'dan@example.com', name: 'Dan', groups: ['contractors'] }] });
    for (const role of TEST_ROLES) await createRole(moto.url, role, TRUST, 43200);
    process.env.AWS_ACCESS_KEY_ID = 'testing';
    process.env.AWS_SECRET_ACCESS_KEY = 'testing';
    const dir = mkdtempSync(join(tmpdir(), 'broker-admin-'));
    dbPath = join(dir, 'broker.db');
    const config = parseServerConfig({
      listen: { host: '127.0.0.1', port: 0 }, policiesDir: POLICIES_DIR, store: { sqlite: dbPath },
      oidc: { issuer: idp.issuer, audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli', allowInsecureHttp: true },
      tokens: { signingKeys: 'ephemeral' },
      aws: { region: 'us-east-1', stsEndpoint: proxy.url, iamEndpoint: moto.url, checkTrustAtStartup: false },
      limits: { issuePerMinute: 1000 },
      confirm: { default: 'none' },
      // carol by group, dan by (IdP-verified) email.
      admins: { groups: ['admins'], emails: ['dan@example.com'] },
    }, dir);
    server = await startServer(config, { log: createLogger({ level: 'silent' }), revocations: recorder });
    for (const who of ['alice', 'bob', 'carol', 'dan']) {
      const r = await fetch(`${server.url}/v1/auth/token`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id_token: await idp.loginAs(`${who}@example.com`) }),
      });
      assert.equal(r.status, 200, await r.clone().text());
      tokens[who] = ((await r.json()) as { access_token: string }).access_token;
    }
  });
  after(async () => {
    await server?.stop();
    await idp?.stop();
    await proxy?.stop();
    await moto?.stop();
  });

  it('the config has no default admin: without `admins` nobody is one', () => {
    const c = parseServerConfig({
      oidc: { issuer: 'https://idp.example.com', audience: 'a', algorithms: ['RS256'], cliClientId: 'c' }, tokens: { signingKeys: 'ephemeral' },
    }, '/tmp');
    assert.deepEqual(c.admins, { groups: [], emails: [] });
    assert.throws(() => parseServerConfig({
      oidc: { issuer: 'https://idp.example.com', audience: 'a', algorithms: ['RS256'], cliClientId: 'c' }, tokens: { signingKeys: 'ephemeral' },
      admins: { emails: ['not an email'] },
    }, '/tmp'), (e: any) => e.code === 'invalid_config' && e.details.some((d: any) => d.path === 'config:admins.emails.0'));
  });

  it('every route of the app under /v1/admin refuses a non-admin with 403 forbidden, audited (the table is app.routes)', async () => {
    const routes = server.routes.filter((r) => r.path.startsWith('/v1/admin') && r.method !== 'ALL');
    // The table is the app's own: the routes this build has, and any added later.
    assert.ok(routes.length >= 7, `admin routes: ${JSON.stringify(routes)}`);
    const before = (await audit()).filter((a) => a.event === 'admin.access' && a.decision === 'denied').length;
    let calls = 0;
    for (const r of routes) {
      const path = r.path.replace(/:[A-Za-z]+/g, 'x1');
      // A well-formed body: the refusal must come from the admin check, not from the body.
      const body = r.method === 'GET' ? undefined : { reason: 'trying my luck', developer: 'alice@example.com', all: true };
      for (const who of ['alice', 'bob']) {
        const res = await call(r.method, path, who, body);
        assert.equal(res.status, 403, `${who} ${r.method} ${r.path}: ${res.text}`);
        assert.equal(res.body.code, 'forbidden');
        assert.equal(res.body.message, 'only administrators may use the admin API');
        calls++;
      }
      const anon = await call(r.method, path, undefined, body);
      assert.equal(anon.status, 401, `no token ${r.method} ${r.path}`);
      // The control: an admin's call of the same route (by group, by email) is not refused by the check.
      for (const who of ['carol', 'dan']) {
        const ok = await call(r.method, path, who, body);
        assert.notEqual(ok.status, 403, `${who} ${r.method} ${r.path}: ${ok.text}`);
      }
      if (r.method !== 'GET') await call('POST', '/v1/admin/unfreeze', 'carol', { all: true, reason: 'undo the control call' });
    }
    const denied = (await audit()).filter((a) => a.event === 'admin.access' && a.decision === 'denied');
    assert.equal(denied.length - before, calls, 'each refusal audited');
    assert.ok(denied.some((a) => a.developer === 'bob@example.com' && String(a.detail?.route).startsWith('POST /v1/admin/')));
  });

  it('every admin action needs a reason: missing, empty or blank is 400 and changes nothing', async () => {
    const s = await startDeploy('alice', 'reason-check');
    for (const reason of [undefined, '', '   ']) {
      for (const [path, body] of [
        ['/v1/admin/sessions/end', { sessions: [s.session.id] }],
        ['/v1/admin/offboard', { developer: 'alice@example.com' }],
        ['/v1/admin/freeze', { template: 'deploy-lambda' }],
        ['/v1/admin/unfreeze', { template: 'deploy-lambda' }],
      ] as const) {
        const r = await call('POST', path, 'carol', { ...body, ...(reason === undefined ? {} : { reason }) });
        assert.equal(r.status, 400, `${path} reason=${JSON.stringify(reason)}: ${r.text}`);
        assert.equal(r.body.code, 'invalid_request');
        assert.ok(r.body.details.some((d: any) => d.path === '/reason'), r.text);
      }
    }
    const again = await call('POST', `/v1/sessions/${s.session.id}/credentials`, 'alice');
    assert.equal(again.status, 200, 'the session still issues: nothing was ended');
    assert.equal((await call('GET', '/v1/admin/freezes', 'carol')).body.freezes.length, 0, 'nothing frozen');
    await endAll('alice@example.com');
  });

  it('lists sessions with agent, params, reason, time left, AccessKeyIds and filters; one session with its history', async () => {
    const a = await startDeploy('alice', 'list-me', 'aider');
    const reissued = (await call('POST', `/v1/sessions/${a.session.id}/credentials`, 'alice')).body.credentials.AccessKeyId as string;
    const b = await call('POST', '/v1/sessions', 'alice', { template: 's3-artifacts', params: { prefix: 'app/builds' }, reason: 'ship', agent: 'claude-code' });
    assert.equal(b.status, 201, b.text);
    const all = await call('GET', '/v1/admin/sessions?developer=alice@example.com&active=1', 'carol');
    assert.equal(all.status, 200, all.text);
    assert.deepEqual(all.body.sessions.map((s: any) => s.template).sort(), ['deploy-lambda', 's3-artifacts']);
    const d = all.body.sessions.find((s: any) => s.id === a.session.id);
    assert.equal(d.developer, 'alice@example.com');
    assert.equal(d.agent, 'aider');
    assert.deepEqual(d.params, { function: 'list-me' });
    assert.equal(d.reason, 'work on list-me');
    assert.equal(d.state, 'active');
    assert.ok(d.timeLeftSeconds > 3600, `time left ${d.timeLeftSeconds}`);
    assert.deepEqual(d.credentials.map((c: any) => c.accessKeyId), [a.credentials.AccessKeyId, reissued]);
    assert.equal(d.startRequest, null, 'started directly (confirm: none)');
    assert.ok(!all.text.includes('SecretAccessKey') && !all.text.includes('SessionToken'), 'no secret');
    const byAgent = await call('GET', '/v1/admin/sessions?agent=aider', 'carol');
    assert.deepEqual(byAgent.body.sessions.map((s: any) => s.id), [a.session.id]);
    const byTemplate = await call('GET', '/v1/admin/sessions?template=s3-artifacts&since=24h', 'carol');
    assert.deepEqual(byTemplate.body.sessions.map((s: any) => s.id), [b.body.session.id]);
    assert.equal((await call('GET', '/v1/admin/sessions?developer=bob@example.com', 'carol')).body.sessions.length, 0);
    for (const [q, path] of [['since=soon', 'since'], ['active=1&since=1h', 'since'], ['active=maybe', 'active'], ['color=red', 'color']]) {
      const r = await call('GET', `/v1/admin/sessions?${q}`, 'carol');
      assert.equal(r.status, 400, `${q}: ${r.text}`);
      assert.equal(r.body.details[0].path, path);
    }
    const one = await call('GET', `/v1/admin/sessions/${a.session.id}`, 'carol');
    assert.equal(one.status, 200, one.text);
    const events = one.body.history.map((h: any) => `${h.event} ${h.decision}`);
    assert.deepEqual(events.slice(0, 3), ['session.start allowed', 'credentials.issue issued', 'credentials.reissue issued']);
    assert.equal((await call('GET', '/v1/admin/sessions/nosuchsession', 'carol')).status, 404);
    const views = (await audit()).filter((r) => r.event === 'admin.view');
    assert.ok(views.every((v) => ['carol@example.com', 'dan@example.com'].includes(v.detail?.admin as string)), 'reads audited with the admin');
    assert.deepEqual([views.at(-1)?.detail?.admin, views.at(-1)?.sessionId], ['carol@example.com', a.session.id]);
    await endAll('alice@example.com');
  });

  it('end by id: no re-issue ("ended by an administrator: <reason>"), the daemon\'s state route says so, audited with the admin, the STS seam called', async () => {
    const a = await startDeploy('alice', 'end-by-id');
    revoked.length = 0;
    const r = await call('POST', '/v1/admin/sessions/end', 'carol', { sessions: [a.session.id], reason: 'key leaked in a log' });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.body.ended.map((e: any) => e.session.id), [a.session.id]);
    assert.equal(r.body.ended[0].session.endedBy, 'carol@example.com');
    assert.equal(r.body.stsRevocation.status, 'requested');
    assert.equal(revoked.length, 1);
    assert.deepEqual(revoked[0]!.by, { admin: 'carol@example.com', reason: 'key leaked in a log' });
    assert.deepEqual(revoked[0]!.sessions, [{ id: a.session.id, developer: 'alice@example.com', roleArn: 'arn:aws:iam::123456789012:role/broker-deploy-lambda', until: Date.parse(a.credentials.Expiration) }]);
    const reissue = await call('POST', `/v1/sessions/${a.session.id}/credentials`, 'alice');
    assert.equal(reissue.status, 409, reissue.text);
    assert.match(reissue.body.message, /ended by an administrator: key leaked in a log$/);
    const state = await call('GET', `/v1/sessions/${a.session.id}`, 'alice');
    assert.equal(state.status, 200, state.text);
    assert.equal(state.body.state, 'ended');
    assert.equal(state.body.endedByAdmin, true);
    assert.equal(state.body.endReason, 'key leaked in a log');
    assert.equal((await call('GET', `/v1/sessions/${a.session.id}`, 'bob')).status, 404, 'another developer\'s session: 404');
    const records = await audit();
    const end = records.find((x) => x.event === 'session.end' && x.sessionId === a.session.id)!;
    assert.equal(end.detail?.admin, 'carol@example.com');
    assert.equal(end.reason, 'key leaked in a log');
    const action = records.filter((x) => x.event === 'admin.end').at(-1)!;
    assert.equal(action.detail?.admin, 'carol@example.com');
    assert.deepEqual(action.detail?.sessions, [a.session.id]);
    // Again: nothing to end; an unknown id refuses the whole request.
    const twice = await call('POST', '/v1/admin/sessions/end', 'carol', { sessions: [a.session.id], reason: 'again' });
    assert.deepEqual(twice.body.alreadyEnded, [a.session.id]);
    const b = await startDeploy('alice', 'survives');
    const unknown = await call('POST', '/v1/admin/sessions/end', 'carol', { sessions: [b.session.id, 'nosuchsession'], reason: 'typo' });
    assert.equal(unknown.status, 404, unknown.text);
    assert.equal((await call('GET', `/v1/sessions/${b.session.id}`, 'alice')).body.state, 'active', 'nothing ended');
    const two = await call('POST', '/v1/admin/sessions/end', 'carol', { sessions: [b.session.id], developer: 'alice@example.com', reason: 'both' });
    assert.equal(two.status, 400, 'one selector only');
    await endAll('alice@example.com');
  });

  it('end by --developer and by --template ends only those', async () => {
    const a1 = await startDeploy('alice', 'dev-a');
    const c1 = await startDeploy('carol', 'dev-c');
    const byDev = await call('POST', '/v1/admin/sessions/end', 'carol', { developer: 'alice@example.com', reason: 'leaving the project' });
    assert.deepEqual(byDev.body.ended.map((e: any) => e.session.id), [a1.session.id]);
    assert.equal((await call('GET', `/v1/sessions/${c1.session.id}`, 'carol')).body.state, 'active');
    const a2 = await startDeploy('alice', 'tpl-a');
    const s3 = await call('POST', '/v1/sessions', 'alice', { template: 's3-artifacts', params: { prefix: 'x' }, reason: 'r', agent: 'claude-code' });
    const byTpl = await call('POST', '/v1/admin/sessions/end', 'carol', { template: 'deploy-lambda', reason: 'bad deploy role' });
    assert.deepEqual(byTpl.body.ended.map((e: any) => e.session.id).sort(), [a2.session.id, c1.session.id].sort());
    assert.equal((await call('GET', `/v1/sessions/${s3.body.session.id}`, 'alice')).body.state, 'active', 'another template is left alone');
    await endAll('alice@example.com');
  });

  it('the service\'s own revocation: an admin end writes the session into its role\'s broker-revoked-sessions deny on IAM (moto), answered and audited as requested', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-admin-revoke-'));
    const config = parseServerConfig({
      listen: { host: '127.0.0.1', port: 0 }, policiesDir: POLICIES_DIR, store: { sqlite: join(dir, 'b.db') },
      oidc: { issuer: idp.issuer, audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli', allowInsecureHttp: true },
      tokens: { signingKeys: 'ephemeral' }, aws: { region: 'us-east-1', stsEndpoint: proxy.url, iamEndpoint: moto.url, checkTrustAtStartup: false },
      confirm: { default: 'none' }, admins: { groups: ['admins'] },
    }, dir);
    const other = await startServer(config, { log: createLogger({ level: 'silent' }) });
    try {
      const login = async (email: string) => ((await (await fetch(`${other.url}/v1/auth/token`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id_token: await idp.loginAs(email) }),
      })).json()) as { access_token: string }).access_token;
      const [alice, carol] = [await login('alice@example.com'), await login('carol@example.com')];
      const post = (token: string, path: string, body: unknown) => fetch(`${other.url}${path}`, {
        method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify(body),
      }).then(async (r) => ({ status: r.status, body: (await r.json()) as any }));
      const s = await post(alice, '/v1/sessions', { template: 'deploy-lambda', params: { function: 'x' }, reason: 'r', agent: 'claude-code' });
      assert.equal(s.status, 201);
      const r = await post(carol, '/v1/admin/sessions/end', { sessions: [s.body.session.id], reason: 'test' });
      assert.equal(r.body.stsRevocation.status, 'requested', JSON.stringify(r.body));
      const id = s.body.session.id as string;
      // Written in the background (never on the answer's path); IAM gets it within a few seconds here.
      const deadline = Date.now() + 15_000;
      let doc = '';
      for (;;) {
        const iam = motoIamClient(moto.url);
        try {
          const out = await iam.send(new GetRolePolicyCommand({ RoleName: 'broker-deploy-lambda', PolicyName: 'broker-revoked-sessions' }));
          doc = decodeURIComponent(out.PolicyDocument!);
        } catch (e) {
          if (!/NoSuchEntity/.test((e as Error).name)) throw e;
        } finally {
          iam.destroy();
        }
        if (doc.includes(id)) break;
        assert.ok(Date.now() < deadline, `the deny names ${id} within 15 s (last: ${doc || 'no policy'})`);
        await new Promise((res) => setTimeout(res, 100));
      }
      assert.match(doc, /"Effect":\s*"Deny"/);
      assert.match(doc, /aws:PrincipalTag\/broker:session/);
      const store = new SqliteStore(join(dir, 'b.db'));
      const action = (await store.auditLog.records()).filter((x) => x.event === 'admin.end').at(-1);
      await store.close();
      assert.equal(action?.detail?.stsRevocation, 'requested');
    } finally {
      await other.stop();
    }
  });

  it('freeze: starts and re-issues refused with 423 and the admin\'s reason, audited; unfreeze restores; --revoke ends what is out there', async () => {
    const held = await startDeploy('alice', 'frozen-held');
    const f = await call('POST', '/v1/admin/freeze', 'carol', { template: 'deploy-lambda', reason: 'incident 42' });
    assert.equal(f.status, 200, f.text);
    assert.equal(f.body.freeze.by, 'carol@example.com');
    const start = await call('POST', '/v1/sessions', 'alice', { template: 'deploy-lambda', params: { function: 'new' }, reason: 'r', agent: 'claude-code' });
    assert.equal(start.status, 423, start.text);
    assert.equal(start.body.code, 'frozen');
    assert.equal(start.body.message, '"deploy-lambda" is frozen by an administrator: incident 42');
    const reissue = await call('POST', `/v1/sessions/${held.session.id}/credentials`, 'alice');
    assert.equal(reissue.status, 423, reissue.text);
    assert.match(reissue.body.message, /incident 42/);
    const state = await call('GET', `/v1/sessions/${held.session.id}`, 'alice');
    assert.deepEqual(state.body.frozen, { scope: 'deploy-lambda', reason: 'incident 42' });
    const other = await call('POST', '/v1/sessions', 'alice', { template: 's3-artifacts', params: { prefix: 'y' }, reason: 'r', agent: 'claude-code' });
    assert.equal(other.status, 201, 'another template is not frozen');
    const denied = (await audit()).filter((a) => a.decision === 'denied' && a.template === 'deploy-lambda' && /frozen/.test(a.reason ?? ''));
    assert.deepEqual(denied.map((a) => a.event).sort(), ['credentials.reissue', 'session.start']);
    const u = await call('POST', '/v1/admin/unfreeze', 'carol', { template: 'deploy-lambda', reason: 'incident over' });
    assert.equal(u.status, 200, u.text);
    assert.equal((await call('POST', `/v1/sessions/${held.session.id}/credentials`, 'alice')).status, 200, 're-issue restored');
    assert.equal((await call('POST', '/v1/admin/unfreeze', 'carol', { template: 'deploy-lambda', reason: 'twice' })).status, 404, 'not frozen');
    assert.equal((await call('POST', '/v1/admin/freeze', 'carol', { template: 'no-such', reason: 'x' })).status, 404, 'unknown template');
    // --all --revoke: every template, and the sessions out there end.
    const all = await call('POST', '/v1/admin/freeze', 'carol', { all: true, reason: 'kill switch', revoke: true });
    assert.equal(all.status, 200, all.text);
    assert.deepEqual(all.body.ended.map((e: any) => e.session.id).sort(), [held.session.id, other.body.session.id].sort());
    const s3 = await call('POST', '/v1/sessions', 'alice', { template: 'read-cloudwatch-logs', params: { logGroup: '/aws/x' }, reason: 'r', agent: 'claude-code' });
    assert.equal(s3.status, 423, s3.text);
    assert.equal(s3.body.message, 'every task template is frozen by an administrator: kill switch');
    const actions = (await audit()).filter((a) => a.event === 'admin.freeze' || a.event === 'admin.unfreeze');
    assert.deepEqual(actions.map((a) => `${a.event} ${a.detail?.scope} ${a.reason} ${a.detail?.admin}`).slice(-3), [
      'admin.freeze deploy-lambda incident 42 carol@example.com', 'admin.unfreeze deploy-lambda incident over carol@example.com', 'admin.freeze * kill switch carol@example.com',
    ]);
    assert.equal((await call('POST', '/v1/admin/unfreeze', 'carol', { all: true, reason: 'all clear' })).status, 200);
    await startDeploy('alice', 'after-all-clear');
    await endAll('alice@example.com');
  });

  it('status: the templates in force with their versions, active sessions, freezes, and the revocation warnings', async () => {
    const held = await startDeploy('alice', 'status-held');
    assert.equal((await call('POST', '/v1/admin/freeze', 'carol', { template: 's3-artifacts', reason: 'bucket audit' })).status, 200);
    warnings = [{ roleArn: 'arn:aws:iam::123456789012:role/broker-deploy-lambda', kind: 'fallback', message: 'every credential of … is denied', since: Date.parse('2026-12-01T10:00:00Z') }];
    try {
      const r = await call('GET', '/v1/admin/status', 'dan');
      assert.equal(r.status, 200, r.text);
      const versions = (await call('GET', '/v1/templates', 'alice')).body.templates.map((t: { name: string; version: string }) => `${t.name}@${t.version}`);
      assert.ok(versions.includes(`deploy-lambda@${r.body.templates.find((t: { name: string }) => t.name === 'deploy-lambda').version}`), r.text);
      assert.deepEqual(r.body.templates.map((t: { name: string }) => t.name), [...r.body.templates.map((t: { name: string }) => t.name)].sort(), 'sorted by name');
      assert.equal(r.body.activeSessions, 1, r.text);
      assert.deepEqual(r.body.freezes.map((f: { scope: string; reason: string; by: string }) => [f.scope, f.reason, f.by]), [['s3-artifacts', 'bucket audit', 'carol@example.com']]);
      assert.deepEqual(r.body.revocationWarnings, [{ roleArn: warnings[0]!.roleArn, kind: 'fallback', message: warnings[0]!.message, since: '2026-12-01T10:00:00.000Z' }]);
      assert.equal((await call('GET', '/v1/admin/status', 'alice')).status, 403, 'admins only');
    } finally {
      warnings = [];
      await call('POST', '/v1/admin/unfreeze', 'carol', { template: 's3-artifacts', reason: 'done' });
      await endAll('alice@example.com');
    }
    assert.ok(held.session.id);
  });

  it('a freeze lives in the store: a second service on the same file refuses too', async () => {
    await call('POST', '/v1/admin/freeze', 'carol', { template: 's3-artifacts', reason: 'persisted' });
    const store = new SqliteStore(dbPath);
    try {
      assert.deepEqual((await store.freezes.list()).map((f) => [f.scope, f.reason, f.by]), [['s3-artifacts', 'persisted', 'carol@example.com']]);
    } finally {
      await store.close();
    }
    await call('POST', '/v1/admin/unfreeze', 'carol', { template: 's3-artifacts', reason: 'done' });
  });

  it('offboard: ends her sessions, revokes her logins (her access token is refused), cancels her waiting start requests', async () => {
    const a = await startDeploy('alice', 'offboard-me');
    const r = await call('POST', '/v1/admin/offboard', 'carol', { developer: 'alice@example.com', reason: 'left the company' });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.body.ended.map((e: any) => e.session.id), [a.session.id]);
    assert.equal(r.body.developer, 'alice@example.com');
    const records = await audit();
    const off = records.filter((x) => x.event === 'admin.offboard').at(-1)!;
    assert.equal(off.detail?.admin, 'carol@example.com');
    assert.equal(off.reason, 'left the company');
    // The access tokens here were bought without a device key (no login family): the CLI test
    // (admin-cli.test.ts) shows a daemon's refresh token refused after offboarding.
    assert.equal((await call('POST', `/v1/sessions/${a.session.id}/credentials`, 'alice')).status, 409);
  });
});
