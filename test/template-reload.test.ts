/**
 * Changing task templates while the service runs (README, "Changing templates while the service
 * runs"): real `broker server` processes on moto (behind a recording proxy, to see the session
 * policy STS was asked for) and the test IdP. A file written into policiesDir is startable without a
 * restart (the directory watch), SIGHUP reloads, a broken set changes nothing and says what is wrong,
 * a session keeps the template version it started under across reloads and restarts, and every
 * reload is audited as `policy.reload` with the versions before and after.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomUUID } from 'node:crypto';
import { STSClient } from '@aws-sdk/client-sts';
import { StsCredentialIssuer } from '../broker/aws/sts-issuer.js';
import { parseServerConfig } from '../broker/config/server-config.js';
import { IdTokenVerifier } from '../broker/identity/id-token-verifier.js';
import { StartRequests } from '../broker/requests/start-requests.js';
import { TaskSessionService } from '../broker/sessions/task-session-service.js';
import { TemplateCatalog } from '../broker/templates/catalog.js';
import { createLogger } from '../broker/log.js';
import { startServer } from '../broker/server/start.js';
import type { AuditRecord } from '../broker/store/audit-event.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { loadTemplates } from '../broker/templates/load.js';
import { startBrokerService, type BrokerService, apiCaller } from './peers/broker-service.js';
import { startIdp, type TestIdp } from './peers/idp.js';
import { createRole, startMoto, type Moto } from './peers/moto.js';
import { assumeRoleCalls, issuedSecrets, startRecordingProxy } from './peers/recording-proxy.js';
import { probeTemplate } from './peers/probe-template.js';
import { filesContaining } from './peers/secret-scan.js';

const TRUST = {
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
};

/** Writes `text` as an editor that saves by rename does: a temporary file, renamed over the old one. */
function saveByRename(dir: string, file: string, text: string): void {
  const tmp = join(dir, `.${file}.swp`);
  writeFileSync(tmp, text);
  renameSync(tmp, join(dir, file));
}

async function auditOf(dbPath: string): Promise<AuditRecord[]> {
  const store = new SqliteStore(dbPath);
  try {
    return await store.auditLog.records(0, 100_000);
  } finally {
    await store.close();
  }
}

async function until<T>(what: string, f: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

describe('template reload', () => {
  let moto: Moto;
  let proxy: Awaited<ReturnType<typeof startRecordingProxy>>;
  let idp: TestIdp;
  const services: BrokerService[] = [];

  before(async () => {
    moto = await startMoto();
    proxy = await startRecordingProxy(moto.url);
    idp = await startIdp();
    await createRole(moto.url, 'broker-reload-probe', TRUST, 43200);
    await createRole(moto.url, 'broker-read-cloudwatch-logs', TRUST, 43200);
    await createRole(moto.url, 'broker-deploy-lambda', TRUST, 43200);
    await createRole(moto.url, 'broker-s3-artifacts', TRUST, 43200);
  });
  after(async () => {
    for (const s of services) await s.stop();
    // No secret STS handed out reached a file of the services (their logs, their stores).
    const secrets = issuedSecrets(proxy.requests).flatMap((c) => [c.secretAccessKey, c.sessionToken]);
    assert.deepEqual(filesContaining(services.map((s) => s.dir), secrets), []);
    await idp.stop();
    await proxy.stop();
    await moto.stop();
  });

  const service = async (extra: Record<string, unknown> = {}, policiesDir?: string) => {
    const s = await startBrokerService({
      issuer: idp.issuer, stsEndpoint: proxy.url, iamEndpoint: moto.url, ...(policiesDir ? { policiesDir } : {}),
      extra: { aws: { region: 'us-east-1', stsEndpoint: proxy.url, iamEndpoint: moto.url, checkTrustAtStartup: false }, ...extra },
    });
    services.push(s);
    return s;
  };
  const api = (svc: BrokerService) => {
    const call = apiCaller(svc, idp);
    const templates = async (who = 'alice@example.com') => (await call('GET', '/v1/templates', who)).body.templates as { name: string; version: string }[];
    const versionOf = async (name: string) => (await templates()).find((t) => t.name === name)?.version;
    const start = (template: string, who = 'alice@example.com') => call('POST', '/v1/sessions', who, { template, params: {}, reason: 'reload test', agent: 'test' });
    return { call, templates, versionOf, start };
  };
  const policyOf = (sessionId: string) => {
    // The session id travels as the broker:session tag.
    const calls = assumeRoleCalls(proxy.requests).filter((c) => Object.values(c).includes(sessionId));
    const last = calls.at(-1);
    assert.ok(last, `an AssumeRole call for ${sessionId}`);
    return JSON.parse(last.Policy!) as { Statement: { Action: string | string[] }[] };
  };
  const reloads = async (svc: BrokerService) => (await auditOf(svc.dbPath)).filter((r) => r.event === 'policy.reload');

  it('a template written into policiesDir is startable without a restart (the directory watch), and the reload is audited with its version', async () => {
    const svc = await service();
    const { start, versionOf } = api(svc);
    assert.equal((await start('reload-probe')).status, 404, 'not there yet');
    writeFileSync(join(svc.policiesDir, 'reload-probe.yaml'), probeTemplate('reload-probe'));
    const version = await until('the new template', () => versionOf('reload-probe'));
    assert.match(version, /^[0-9a-f]{12}$/);
    const started = await start('reload-probe');
    assert.equal(started.status, 201, JSON.stringify(started.body));
    assert.equal(started.body.session.templateVersion, version);
    assert.deepEqual(policyOf(started.body.session.id).Statement[0]!.Action, 'logs:DescribeLogGroups');
    const [r, ...more] = await reloads(svc);
    assert.equal(more.length, 0, 'one reload for one new file');
    assert.equal(r!.decision, 'updated');
    assert.equal(r!.detail?.trigger, 'watch');
    assert.deepEqual(r!.detail?.added, [{ name: 'reload-probe', version }]);
    assert.deepEqual(r!.detail?.removed, []);
    assert.equal((r!.detail?.before as Record<string, string>)['reload-probe'], undefined);
    assert.equal((r!.detail?.after as Record<string, string>)['reload-probe'], version);
    assert.ok('read-cloudwatch-logs' in (r!.detail?.before as object), 'the versions before name every template');
  });

  it('an edit saved by rename is picked up; the running session keeps its version (re-issues and GET /v1/sessions), new starts get the new one', async () => {
    const svc = await service();
    const { call, start, versionOf } = api(svc);
    writeFileSync(join(svc.policiesDir, 'reload-probe.yaml'), probeTemplate('reload-probe'));
    const v1 = await until('the template', () => versionOf('reload-probe'));
    const first = await start('reload-probe');
    assert.equal(first.status, 201);
    const id = first.body.session.id as string;

    saveByRename(svc.policiesDir, 'reload-probe.yaml', probeTemplate('reload-probe', { action: 'logs:GetLogEvents' }));
    const v2 = await until('the edit', async () => { const v = await versionOf('reload-probe'); return v !== v1 ? v : undefined; });
    const reissued = await call('POST', `/v1/sessions/${id}/credentials`, 'alice@example.com');
    assert.equal(reissued.status, 200, JSON.stringify(reissued.body));
    assert.equal(reissued.body.session.templateVersion, v1);
    assert.deepEqual(policyOf(id).Statement[0]!.Action, 'logs:DescribeLogGroups', 'the re-issue used the version the session started under');
    const listed = (await call('GET', '/v1/sessions', 'alice@example.com')).body.sessions as { id: string; templateVersion: string }[];
    assert.equal(listed.find((s) => s.id === id)?.templateVersion, v1);

    assert.equal((await call('DELETE', `/v1/sessions/${id}`, 'alice@example.com')).status, 200);
    const second = await start('reload-probe');
    assert.equal(second.status, 201);
    assert.equal(second.body.session.templateVersion, v2);
    assert.deepEqual(policyOf(second.body.session.id).Statement[0]!.Action, 'logs:GetLogEvents');
    const changed = (await reloads(svc)).at(-1)!;
    assert.deepEqual(changed.detail?.changed, [{ name: 'reload-probe', from: v1, to: v2 }]);
    const startRecord = (await auditOf(svc.dbPath)).find((r) => r.event === 'session.start' && r.sessionId === second.body.session.id)!;
    assert.equal(startRecord.detail?.templateVersion, v2, 'session.start records the version');
  });

  it('SIGHUP reloads (no directory watch); a whitespace-, comment- and key-order-only edit keeps the version and records nothing', async () => {
    const svc = await service({ policiesWatch: false });
    const { start, versionOf } = api(svc);
    writeFileSync(join(svc.policiesDir, 'reload-probe.yaml'), probeTemplate('reload-probe'));
    await sleep(1000);
    assert.equal(await versionOf('reload-probe'), undefined, 'no watch: nothing happens by itself');
    svc.signal('SIGHUP');
    const v1 = await until('SIGHUP to load it', () => versionOf('reload-probe'));
    assert.equal((await start('reload-probe')).status, 201);
    const r = (await reloads(svc)).at(-1)!;
    assert.equal(r.detail?.trigger, 'signal');
    assert.equal(r.reason, 'SIGHUP');

    // The same template, laid out differently: comments, indentation, flow vs block, key order, a default written out.
    const relaid = probeTemplate('reload-probe', { comment: 'reformatted' }).replace('allowed: { groups: [developers, contractors] }', 'allowed:\n    groups:\n      - developers\n      - contractors\n    emails: []')
      .replace('session: { maxDuration: 1h }', 'session:\n  maxDuration: 60m');
    writeFileSync(join(svc.policiesDir, 'reload-probe.yaml'), relaid);
    const count = (await reloads(svc)).length;
    svc.signal('SIGHUP');
    await until('the reload to be logged', async () => (svc.log().split('\n').filter((l) => l.includes('templates reloaded: no change')).length ? true : undefined));
    assert.equal(await versionOf('reload-probe'), v1, 'same content, same version');
    assert.equal((await reloads(svc)).length, count, 'no audit record for a reload that changed nothing');
  });

  it('a broken template leaves the whole old set in force, and the error names the file, the field and a fix (log, audit)', async () => {
    const svc = await service({ policiesWatch: false });
    const { start, versionOf } = api(svc);
    const before = await versionOf('read-cloudwatch-logs');
    // One good new template, one broken one: the set is taken whole or not at all.
    writeFileSync(join(svc.policiesDir, 'reload-probe.yaml'), probeTemplate('reload-probe'));
    writeFileSync(join(svc.policiesDir, 'reload-broken.yaml'), probeTemplate('reload-broken').replace('session: { maxDuration: 1h }', 'session: { maxDuration: 1h, credentialLifeTime: 1h }'));
    rmSync(join(svc.policiesDir, 's3-artifacts.yaml'));
    svc.signal('SIGHUP');
    const failed = await until('the failed reload', async () => (await reloads(svc)).find((r) => r.decision === 'failed'));
    assert.equal(failed.detail?.trigger, 'signal');
    const problems = failed.detail?.problems as { file: string; path: string; message: string }[];
    assert.deepEqual(problems.map((p) => [p.file, p.path, p.message]), [[join(svc.policiesDir, 'reload-broken.yaml'), 'session.credentialLifeTime', 'unknown key "credentialLifeTime"']]);
    assert.equal((failed.detail?.versions as Record<string, string>)['read-cloudwatch-logs'], before);
    const line = svc.log().split('\n').find((l) => l.includes('template reload refused'))!;
    assert.match(line, /"level":50/);
    assert.match(line, /reload-broken\.yaml/);
    assert.match(line, /did you mean \\"credentialLifetime\\"\?/, 'the hint is logged');
    assert.equal(await versionOf('reload-probe'), undefined, 'the good new template is not taken either');
    assert.equal((await start('reload-probe')).status, 404);
    assert.ok((await api(svc).templates()).some((t) => t.name === 's3-artifacts'), 'the removed file\'s template is still in force');
    assert.equal((await start('read-cloudwatch-logs')).status, 400, 'the old template still answers (here: its parameter is missing)');
  });

  it('a removed template: its running session goes on (re-issues, across a restart of the service), new starts are refused with a clear 404', async () => {
    const svc = await service({ policiesWatch: false });
    const { call, start, versionOf } = api(svc);
    writeFileSync(join(svc.policiesDir, 'reload-probe.yaml'), probeTemplate('reload-probe', { action: 'logs:GetLogEvents' }));
    svc.signal('SIGHUP');
    const v1 = await until('the template', () => versionOf('reload-probe'));
    const started = await start('reload-probe');
    assert.equal(started.status, 201);
    const id = started.body.session.id as string;

    rmSync(join(svc.policiesDir, 'reload-probe.yaml'));
    svc.signal('SIGHUP');
    await until('the removal', async () => ((await versionOf('reload-probe')) === undefined ? true : undefined));
    const removed = (await reloads(svc)).at(-1)!;
    assert.deepEqual(removed.detail?.removed, [{ name: 'reload-probe', version: v1 }]);
    const refused = await start('reload-probe', 'carol@example.com');
    assert.equal(refused.status, 404);
    assert.match(refused.body.message, /^the task template "reload-probe" was removed from the service at \d{4}-/);
    assert.match(refused.body.hint, /running sessions of it go on until they end/);
    const reissued = await call('POST', `/v1/sessions/${id}/credentials`, 'alice@example.com');
    assert.equal(reissued.status, 200, JSON.stringify(reissued.body));
    assert.equal(reissued.body.session.templateVersion, v1);

    // A restart on the same store, with the template still gone: the version comes from the store.
    await svc.stop();
    const again = await service({ policiesWatch: false, store: { sqlite: svc.dbPath } }, svc.policiesDir);
    const after = await api(again).call('POST', `/v1/sessions/${id}/credentials`, 'alice@example.com');
    assert.equal(after.status, 200, JSON.stringify(after.body));
    assert.equal(after.body.session.templateVersion, v1);
    assert.equal(after.body.session.region, 'eu-west-1', 'the view is the session\'s version too');
    assert.deepEqual(policyOf(id).Statement[0]!.Action, 'logs:GetLogEvents');
    const listed = (await api(again).call('GET', '/v1/sessions', 'alice@example.com')).body.sessions as { id: string; templateVersion: string }[];
    assert.equal(listed.find((s) => s.id === id)?.templateVersion, v1);
  });

  it('a start request starts only under the template version it was made for: a reload that changed the template since refuses it (409), and a new ask makes a new request', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'broker-reload-req-')), 'policies');
    mkdirSync(dir);
    writeFileSync(join(dir, 'reload-probe.yaml'), probeTemplate('reload-probe', { confirm: 'self' }));
    const store = new SqliteStore(join(dir, '..', 'b.db'));
    const log = createLogger({ level: 'silent' });
    try {
      const templates = await TemplateCatalog.open({ dir, store, log });
      const sessions = new TaskSessionService({ store, templates, issuer: new StsCredentialIssuer(new STSClient({ region: 'us-east-1', endpoint: proxy.url, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } }), 8000), log, maxActiveSessions: 20 });
      const requests = new StartRequests({ store, templates, sessions, log, publicUrl: () => 'http://127.0.0.1:1', defaults: { mode: 'self', maxAgeSeconds: 300, timeoutSeconds: 900 } });
      const verifier = new IdTokenVerifier({
        issuer: idp.issuer, audience: 'broker-cli', algorithms: ['RS256'], groupsClaim: 'groups', identityClaim: 'email', clockToleranceSeconds: 5,
        authorizedParty: 'broker-cli', maxAgeSeconds: 600, seen: store.seenIdTokens,
      });
      const alice = { id: 'alice@example.com', email: 'alice@example.com', groups: ['developers'] };
      const ask = { template: 'reload-probe', params: {}, reason: 'versions', agent: 'test' };
      const confirm = async (id: string) => {
        const token = await idp.issueIdToken('alice@example.com', { claims: { auth_time: Math.floor(Date.now() / 1000), jti: randomUUID() } });
        return requests.decide(id, { token: await verifier.verify(token), loginStartedAt: Date.now() - 1000, via: 'device' }, 'confirm', '');
      };
      const v1 = templates.get('reload-probe')!.version;
      const r = (await requests.ask(alice, ask))!;
      assert.equal(r.templateVersion, v1);
      assert.equal((await confirm(r.id)).status, 'confirmed');
      const pending = (await requests.ask(alice, { ...ask, agent: 'other' }))!;

      writeFileSync(join(dir, 'reload-probe.yaml'), probeTemplate('reload-probe', { confirm: 'self', action: 'logs:GetLogEvents' }));
      assert.equal((await templates.reload({ trigger: 'admin', admin: 'carol@example.com', reason: 'wider' })).ok, true);
      const v2 = templates.get('reload-probe')!.version;
      await assert.rejects(requests.startConfirmed(alice, r.id, ask), (e: unknown) => (e as { code?: string }).code === 'conflict'
        && (e as Error).message === `the template "reload-probe" changed since start request ${r.id} was made (version ${v1}, now ${v2})`);
      assert.equal((await store.sessions.active('alice@example.com')).length, 0, 'nothing started');
      const again = (await requests.ask(alice, { ...ask, agent: 'other' }))!;
      assert.notEqual(again.id, pending.id, 'the pending request of the old version is not answered again');
      assert.equal(again.templateVersion, v2);
      assert.equal((await confirm(again.id)).status, 'confirmed');
      const started = await requests.startConfirmed(alice, again.id, { ...ask, agent: 'other' });
      assert.equal(started.session.templateVersion, v2);
    } finally {
      await store.close();
    }
  });

  it('in-process, the API the admin route calls: reload({trigger: admin}) returns the problems (file, field, hint) and changes nothing; fixed, it returns the versions and audits the admin', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-reload-api-'));
    const policies = join(dir, 'policies');
    mkdirSync(policies);
    writeFileSync(join(policies, 'reload-probe.yaml'), probeTemplate('reload-probe'));
    const dbPath = join(dir, 'broker.db');
    const config = parseServerConfig({
      listen: { host: '127.0.0.1', port: 0 }, policiesDir: policies, policiesWatch: false, store: { sqlite: dbPath },
      oidc: { issuer: idp.issuer, audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli', allowInsecureHttp: true },
      tokens: { signingKeys: 'ephemeral' }, aws: { region: 'us-east-1', stsEndpoint: proxy.url, iamEndpoint: moto.url, checkTrustAtStartup: false },
    }, dir);
    const server = await startServer(config, { log: createLogger({ level: 'silent' }) });
    let v1 = '';
    let v2 = '';
    try {
      v1 = loadTemplates(policies).templates.get('reload-probe')!.version;
      writeFileSync(join(policies, 'reload-probe.yaml'), probeTemplate('reload-probe').replace("Version: '2012-10-17'", "Version: '2008-10-17'"));
      writeFileSync(join(policies, 'other.yaml'), probeTemplate('other'));
      const bad = await server.reload({ trigger: 'admin', admin: 'carol@example.com', reason: 'new other template' });
      assert.equal(bad.ok, false);
      assert.deepEqual(bad.after, { 'reload-probe': v1 });
      assert.deepEqual([bad.added, bad.removed, bad.changed], [[], [], []]);
      assert.equal(bad.problems.length, 1);
      assert.equal(bad.problems[0]!.file, join(policies, 'reload-probe.yaml'));
      assert.equal(bad.problems[0]!.path, 'aws.policy.Version');
      assert.ok(bad.problems[0]!.hint, 'a hint');

      writeFileSync(join(policies, 'reload-probe.yaml'), probeTemplate('reload-probe', { action: 'logs:GetLogEvents' }));
      const good = await server.reload({ trigger: 'admin', admin: 'carol@example.com', reason: 'new other template' });
      v2 = loadTemplates(policies).templates.get('reload-probe')!.version;
      const vo = loadTemplates(policies).templates.get('other')!.version;
      assert.equal(good.ok, true);
      assert.deepEqual(good.before, { 'reload-probe': v1 });
      assert.deepEqual(good.after, { other: vo, 'reload-probe': v2 });
      assert.deepEqual(good.added, [{ name: 'other', version: vo }]);
      assert.deepEqual(good.changed, [{ name: 'reload-probe', from: v1, to: v2 }]);
      assert.deepEqual(good.problems, []);
      // An admin's reload is recorded even when it changes nothing (who asked, and why).
      const same = await server.reload({ trigger: 'admin', admin: 'carol@example.com', reason: 'just checking' });
      assert.equal(same.ok, true);
      const audit = (await auditOf(dbPath)).filter((r) => r.event === 'policy.reload');
      assert.deepEqual(audit.map((r) => [r.decision, r.detail?.trigger, r.detail?.by, r.reason]), [
        ['failed', 'admin', 'carol@example.com', 'new other template'],
        ['updated', 'admin', 'carol@example.com', 'new other template'],
        ['updated', 'admin', 'carol@example.com', 'just checking'],
      ]);
      assert.deepEqual((audit[0]!.detail?.problems as { path: string }[]).map((p) => p.path), ['aws.policy.Version']);
      assert.deepEqual(audit[1]!.detail?.before, { 'reload-probe': v1 });
      assert.deepEqual(audit[1]!.detail?.after, { other: vo, 'reload-probe': v2 });
    } finally {
      await server.stop();
    }
    const store = new SqliteStore(dbPath);
    try {
      const old = (await store.templateVersions.get('reload-probe', v1))!;
      assert.equal((old.definition as { aws: { policy: { Statement: { Action: string }[] } } }).aws.policy.Statement[0]!.Action, 'logs:DescribeLogGroups', 'both versions are kept in the store, each with its content');
      assert.ok(await store.templateVersions.get('reload-probe', v2));
    } finally {
      await store.close();
    }
  });
});
