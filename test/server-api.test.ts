/**
 * The service's API edge cases, with the service in-process over real HTTP, the real IdP
 * (oidc-provider) minting and publishing keys, and moto behind a recording proxy as STS.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, describe, it } from 'node:test';
import { parseServerConfig } from '../broker/config/server-config.js';
import { createLogger } from '../broker/log.js';
import { startServer, type RunningServer } from '../broker/server/start.js';
import { SqliteStore } from '../broker/store/sqlite-store.js';
import { startIdp } from './peers/idp.js';
import { startMoto } from './peers/moto.js';
import { POLICIES_DIR } from './peers/paths.js';
import { assumeRoleCalls, startRecordingProxy } from './peers/recording-proxy.js';
import { forgeIdToken, unsignedIdToken } from './peers/tokens.js';
import { dpopProof, generateDpopKey } from '../broker/client/dpop-key.js';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';

describe('broker service API', () => {
  let moto: Awaited<ReturnType<typeof startMoto>>;
  let proxy: Awaited<ReturnType<typeof startRecordingProxy>>;
  let idp: Awaited<ReturnType<typeof startIdp>>;
  let server: RunningServer;
  let dbPath: string;
  const tokens: Record<string, string> = {};

  const call = async (method: string, path: string, opts: { token?: string; body?: unknown; raw?: string; dpop?: string } = {}) => {
    const res = await fetch(`${server.url}${path}`, {
      method,
      headers: {
        'content-type': 'application/json', ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
        ...(opts.dpop ? { dpop: opts.dpop } : {}),
      },
      body: opts.raw ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body)),
    });
    const text = await res.text();
    return { status: res.status, body: JSON.parse(text) as any, text, headers: res.headers };
  };
  const loginAs = async (email: string) => {
    const r = await call('POST', '/v1/auth/token', { body: { id_token: await idp.loginAs(email) } });
    assert.equal(r.status, 200, r.text);
    return r.body.access_token as string;
  };
  const start = (who: string, body: Record<string, unknown>) => call('POST', '/v1/sessions', { token: tokens[who], body });

  before(async () => {
    moto = await startMoto();
    proxy = await startRecordingProxy(moto.url);
    idp = await startIdp();
    const dir = mkdtempSync(join(tmpdir(), 'broker-api-'));
    dbPath = join(dir, 'broker.db');
    process.env.AWS_ACCESS_KEY_ID = 'testing';
    process.env.AWS_SECRET_ACCESS_KEY = 'testing';
    const config = parseServerConfig({
      listen: { host: '127.0.0.1', port: 0 },
      policiesDir: POLICIES_DIR,
      store: { sqlite: dbPath, busyTimeoutMs: 300 },
      oidc: { issuer: idp.issuer, audience: 'broker-cli', algorithms: ['RS256', 'ES256'], cliClientId: 'broker-cli', allowInsecureHttp: true },
      tokens: { signingKeys: 'ephemeral' },
      aws: { region: 'us-east-1', stsEndpoint: proxy.url, iamEndpoint: moto.url, checkTrustAtStartup: false },
      limits: { issuePerMinute: 8 },
    }, dir);
    server = await startServer(config, { log: createLogger({ level: 'silent' }) });
    tokens.alice = await loginAs('alice@example.com');
    tokens.bob = await loginAs('bob@example.com');
    tokens.carol = await loginAs('carol@example.com');
  });
  after(async () => {
    await server?.stop();
    await idp?.stop();
    await proxy?.stop();
    await moto?.stop();
  });

  describe('identity', () => {
    const hostile = async (label: string, token: () => Promise<string> | string) => {
      const r = await call('POST', '/v1/auth/token', { body: { id_token: await token() } });
      assert.equal(r.status, 401, `${label}: ${r.text}`);
      assert.equal(r.body.code, 'unauthenticated');
      assert.equal(r.body.message, 'ID token rejected', 'fixed message: the client learns nothing about why');
      assert.equal(r.headers.get('www-authenticate'), 'Bearer error="invalid_token"');
    };
    it('rejects a token signed by another key', () => hostile('forged', () => forgeIdToken({ issuer: idp.issuer, audience: 'broker-cli', email: 'alice@example.com', groups: ['developers'] })));
    it('rejects alg none', () => hostile('alg none', () => unsignedIdToken({ issuer: idp.issuer, audience: 'broker-cli', email: 'alice@example.com', groups: ['developers'] })));
    it('rejects a wrong audience', async () => hostile('aud', async () => idp.loginAs('alice@example.com', { audience: 'another-client' })));
    it('rejects a wrong issuer', () => hostile('iss', () => forgeIdToken({ issuer: 'http://127.0.0.1:1/evil', audience: 'broker-cli', email: 'alice@example.com', groups: ['developers'] })));
    it('rejects an expired token', async () => hostile('expired', async () => idp.loginAs('alice@example.com', { expiresInSeconds: -600 })));
    it('records the denials in the audit log, without the token', () => {
      const store = new SqliteStore(dbPath);
      const denied = store.auditRecords().filter((r) => r.event === 'login' && r.decision === 'denied');
      store.close();
      assert.ok(denied.length >= 5, `${denied.length} login denials`);
      assert.ok(denied.every((r) => !/eyJ/.test(JSON.stringify(r))), 'no JWT in the audit log');
    });
    it('needs a bearer token; a refresh token is not an access token', async () => {
      const none = await call('GET', '/v1/sessions');
      assert.equal(none.status, 401);
      const { key } = await generateDpopKey();
      const r = await call('POST', '/v1/auth/token', { body: { id_token: await idp.loginAs('alice@example.com') }, dpop: await dpopProof(key, 'POST', `${server.url}/v1/auth/token`) });
      assert.equal(r.status, 200, r.text);
      const wrongTyp = await call('GET', '/v1/sessions', { token: r.body.refresh_token });
      assert.equal(wrongTyp.status, 401);
      assert.equal(wrongTyp.body.code, 'unauthenticated');
    });
  });

  describe('refresh tokens are bound to the device key (DPoP, RFC 9449)', () => {
    const url = (path: string) => `${server.url}${path}`;
    let key: Awaited<ReturnType<typeof generateDpopKey>>['key'];
    let refreshToken: string;
    before(async () => {
      ({ key } = await generateDpopKey());
      const r = await call('POST', '/v1/auth/token', { body: { id_token: await idp.loginAs('alice@example.com') }, dpop: await dpopProof(key, 'POST', url('/v1/auth/token')) });
      assert.equal(r.status, 200, r.text);
      refreshToken = r.body.refresh_token;
    });
    const refresh = (dpop?: string) => call('POST', '/v1/auth/refresh', { body: { refresh_token: refreshToken }, ...(dpop ? { dpop } : {}) });
    const refused = (r: Awaited<ReturnType<typeof call>>, label: string) => {
      assert.equal(r.status, 401, `${label}: ${r.text}`);
      assert.equal(r.body.code, 'unauthenticated');
      assert.ok(!('access_token' in r.body));
    };

    it('a login without a proof gets an access token but no refresh token', async () => {
      const r = await call('POST', '/v1/auth/token', { body: { id_token: await idp.loginAs('alice@example.com') } });
      assert.equal(r.status, 200, r.text);
      assert.equal(typeof r.body.access_token, 'string');
      assert.ok(!('refresh_token' in r.body));
    });
    it('refresh with a proof from the bound key works', async () => {
      const r = await refresh(await dpopProof(key, 'POST', url('/v1/auth/refresh')));
      assert.equal(r.status, 200, r.text);
      assert.equal(r.body.developer, 'alice@example.com');
    });
    it('refuses a refresh token without a proof', async () => refused(await refresh(), 'no proof'));
    it('refuses a proof from another key (the token replayed from another machine)', async () => {
      const other = await generateDpopKey();
      refused(await refresh(await dpopProof(other.key, 'POST', url('/v1/auth/refresh'))), 'other key');
    });
    it('refuses a proof used twice', async () => {
      const proof = await dpopProof(key, 'POST', url('/v1/auth/refresh'));
      assert.equal((await refresh(proof)).status, 200);
      refused(await refresh(proof), 'replay');
    });
    it('refuses a proof for another URL or method', async () => {
      refused(await refresh(await dpopProof(key, 'POST', url('/v1/auth/token'))), 'htu');
      refused(await refresh(await dpopProof(key, 'GET', url('/v1/auth/refresh'))), 'htm');
    });
    it('refuses a proof carrying a private key, or signed with alg none, or too old', async () => {
      const { privateKey } = await generateKeyPair('ES256', { extractable: true });
      const priv = await exportJWK(privateKey);
      const claims = { htm: 'POST', htu: url('/v1/auth/refresh'), jti: crypto.randomUUID() };
      const withPrivate = await new SignJWT(claims).setProtectedHeader({ typ: 'dpop+jwt', alg: 'ES256', jwk: priv }).setIssuedAt().sign(privateKey);
      refused(await refresh(withPrivate), 'private jwk');
      const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
      const none = `${part({ typ: 'dpop+jwt', alg: 'none', jwk: key.publicJwk })}.${part({ ...claims, iat: Math.floor(Date.now() / 1000) })}.`;
      refused(await refresh(none), 'alg none');
      const old = await new SignJWT({ ...claims, jti: crypto.randomUUID() }).setProtectedHeader({ typ: 'dpop+jwt', alg: 'ES256', jwk: key.publicJwk })
        .setIssuedAt(Math.floor(Date.now() / 1000) - 3600).sign(key.privateKey);
      refused(await refresh(old), 'old');
    });
    it('audits refreshes, granted and refused, without tokens', () => {
      const store = new SqliteStore(dbPath);
      const records = store.auditRecords().filter((r) => r.event === 'token.refresh');
      store.close();
      assert.ok(records.some((r) => r.decision === 'allowed') && records.some((r) => r.decision === 'denied'));
      assert.ok(!JSON.stringify(records).includes(refreshToken));
      assert.ok(!/eyJ/.test(JSON.stringify(records)), 'no JWT in the audit log');
    });
  });

  describe('task sessions', () => {
    it('denies a principal outside the allowed groups (403, with the reason, audited)', async () => {
      const before = assumeRoleCalls(proxy.requests).length;
      const r = await start('bob', { template: 'deploy-lambda', params: { function: 'checkout-api' } });
      assert.equal(r.status, 403, r.text);
      assert.equal(r.body.code, 'forbidden');
      assert.match(r.body.message, /bob@example\.com may not start "deploy-lambda"/);
      assert.equal(assumeRoleCalls(proxy.requests).length, before, 'nothing asked of STS');
    });
    it('404s an unknown template', async () => {
      const r = await start('alice', { template: 'no-such-task' });
      assert.equal(r.status, 404);
      assert.equal(r.body.code, 'not_found');
    });
    it('400s a parameter that fails its pattern, naming it by JSON pointer', async () => {
      const r = await start('alice', { template: 'deploy-lambda', params: { function: 'x"}],"Resource":"*' } });
      assert.equal(r.status, 400, r.text);
      assert.equal(r.body.code, 'invalid_request');
      assert.equal(r.body.details[0].path, '/params/function');
    });
    it('400s malformed bodies with field paths, never a 500', async () => {
      const bad = await call('POST', '/v1/sessions', { token: tokens.alice, raw: '{not json' });
      assert.equal(bad.status, 400);
      const extra = await start('alice', { template: 'deploy-lambda', params: {}, surprise: 1 });
      assert.equal(extra.status, 400);
      assert.ok(extra.body.details.some((d: { path: string }) => d.path === '/'), extra.text);
      const ttl = await start('alice', { template: 'deploy-lambda', params: { function: 'a' }, ttl: '5m' });
      assert.equal(ttl.status, 400);
      assert.deepEqual(ttl.body.details.map((d: { path: string }) => d.path), ['/ttl']);
      const agent = await start('alice', { template: 'deploy-lambda', params: { function: 'a' }, agent: 'evil;rm -rf' });
      assert.equal(agent.status, 400);
      assert.deepEqual(agent.body.details.map((d: { path: string }) => d.path), ['/agent']);
      const huge = await call('POST', '/v1/sessions', { token: tokens.alice, raw: JSON.stringify({ template: 'x'.repeat(100_000) }) });
      assert.equal(huge.status, 400);
      for (const r of [bad, extra, ttl, agent, huge]) assert.ok(!/at .*\.js:\d+/.test(r.text), 'no stack trace');
    });
    it('issues, re-issues, refuses a second session (409), and stops re-issue once ended', async () => {
      const r = await start('alice', { template: 'deploy-lambda', params: { function: 'checkout-api' }, reason: 'fix timeout', agent: 'aider', ttl: '30m' });
      assert.equal(r.status, 201, r.text);
      const { session, credentials } = r.body;
      assert.equal(credentials.Version, 1);
      assert.ok(Date.parse(session.expiresAt) - Date.now() <= 30 * 60_000 + 5000);
      const call1 = assumeRoleCalls(proxy.requests).at(-1)!;
      // DurationSeconds = min(requested 30m, template max, credential lifetime)
      assert.equal(Number(call1.DurationSeconds), 1800);

      const dup = await start('alice', { template: 'deploy-lambda', params: { function: 'checkout-api' } });
      assert.equal(dup.status, 409);
      assert.equal(dup.body.code, 'conflict');

      const re = await call('POST', `/v1/sessions/${session.id}/credentials`, { token: tokens.alice });
      assert.equal(re.status, 200, re.text);
      assert.notEqual(re.body.credentials.AccessKeyId, credentials.AccessKeyId);

      const other = await call('POST', `/v1/sessions/${session.id}/credentials`, { token: tokens.carol });
      assert.equal(other.status, 404, "another developer's session does not exist for them");

      const end = await call('DELETE', `/v1/sessions/${session.id}`, { token: tokens.alice });
      assert.equal(end.status, 200);
      const afterEnd = await call('POST', `/v1/sessions/${session.id}/credentials`, { token: tokens.alice });
      assert.equal(afterEnd.status, 409);
      assert.match(afterEnd.body.message, /has ended/);

      // The audit trail of that session, in order, with AccessKeyIds and without secrets.
      const store = new SqliteStore(dbPath);
      const trail = store.auditRecords().filter((x) => x.sessionId === session.id);
      assert.equal(store.verifyAuditChain(), null, 'hash chain intact');
      store.close();
      // Carol's attempt on Alice's session is part of its trail too: audited as her denial.
      assert.deepEqual(trail.map((x) => `${x.developer}:${x.event}:${x.decision}`), [
        'alice@example.com:session.start:allowed', 'alice@example.com:credentials.issue:issued',
        'alice@example.com:credentials.reissue:issued', 'carol@example.com:credentials.reissue:denied',
        'alice@example.com:session.end:ended', 'alice@example.com:credentials.reissue:denied',
      ]);
      assert.equal(trail[1]!.accessKeyId, credentials.AccessKeyId);
      const dump = JSON.stringify(trail);
      for (const secret of [credentials.SecretAccessKey, credentials.SessionToken, re.body.credentials.SecretAccessKey]) {
        assert.ok(!dump.includes(secret), 'no secret in the audit log');
      }
    });
    it('keeps the audit log append-only at the database level', () => {
      const db = new DatabaseSync(dbPath);
      assert.throws(() => db.exec("UPDATE audit SET decision = 'allowed'"), /append-only/);
      assert.throws(() => db.exec('DELETE FROM audit'), /append-only/);
      db.close();
    });
    it('rate-limits credential requests per developer (429 with Retry-After)', async () => {
      let last;
      for (let i = 0; i < 10; i++) last = await start('carol', { template: 'no-such-template' });
      assert.equal(last!.status, 429);
      assert.equal(last!.body.code, 'rate_limited');
      assert.ok(Number(last!.headers.get('retry-after')) > 0);
    });
  });

  describe('fail closed', () => {
    it('issues nothing when the audit log cannot be written', async () => {
      const before = assumeRoleCalls(proxy.requests).length;
      const locker = new DatabaseSync(dbPath, { timeout: 0 });
      locker.exec('BEGIN EXCLUSIVE');
      try {
        const r = await start('alice', { template: 'read-cloudwatch-logs', params: logParams() });
        assert.equal(r.status, 503, r.text);
        assert.equal(r.body.code, 'audit_unavailable');
        assert.match(r.body.message, /nothing was issued/);
        assert.ok(!('credentials' in r.body));
      } finally {
        locker.exec('ROLLBACK');
        locker.close();
      }
      assert.equal(assumeRoleCalls(proxy.requests).length, before, 'STS was never called');
      const list = await call('GET', '/v1/sessions', { token: tokens.alice });
      assert.deepEqual(list.body.sessions, [], 'no session was left behind');
    });
  });
});

/** Valid parameters for the shipped read-cloudwatch-logs template. */
function logParams(): Record<string, string> {
  return { logGroup: '/aws/lambda/checkout-api' };
}
