/**
 * The service's API edge cases, with the service in-process over real HTTP, the real IdP
 * (oidc-provider) minting and publishing keys, and moto behind a recording proxy as STS.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, describe, it } from 'node:test';
import { EXIT_CODES } from '../broker/errors.js';
import { parseServerConfig } from '../broker/config/server-config.js';
import { createLogger } from '../broker/log.js';
import { startServer, type RunningServer } from '../broker/server/start.js';
import { StsCredentialIssuer } from '../broker/aws/sts-issuer.js';
import { TaskSessionService } from '../broker/sessions/task-session-service.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { TemplateCatalog } from '../broker/templates/catalog.js';
import { loadTemplatesOrThrow } from '../broker/templates/load.js';
import { broker } from './peers/cli.js';
import { DEFAULT_USERS, startIdp } from './peers/idp.js';
import { startMoto } from './peers/moto.js';
import { POLICIES_DIR } from './peers/paths.js';
import { assumeRoleCalls, startRecordingProxy } from './peers/recording-proxy.js';
import { forgeIdToken, peekClaims, unsignedIdToken } from './peers/tokens.js';
import { dpopProof, generateDpopKey } from '../broker/client/dpop-key.js';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { STSClient } from '@aws-sdk/client-sts';

type Call = (method: string, path: string, opts?: { token?: string; body?: unknown; raw?: string; dpop?: string; address?: string }) =>
  Promise<{ status: number; body: any; text: string; headers: Headers }>;

/** A client address of its own (the services here trust one proxy hop: this test's X-Forwarded-For). */
const someAddress = () => `10.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 255)}`;

/**
 * A client of one service over HTTP, as the CLI and daemon are. Each call comes from an address of
 * its own unless `address` says (X-Forwarded-For, which these services trust one hop of), so the
 * per-address limit and the per-address audit windows of /v1/auth/* only meet where a test means them to.
 */
function client(url: () => string): Call {
  return async (method, path, opts = {}) => {
    const res = await fetch(`${url()}${path}`, {
      method,
      headers: {
        'content-type': 'application/json', ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
        ...(opts.dpop ? { dpop: opts.dpop } : {}), 'x-forwarded-for': opts.address ?? someAddress(),
      },
      body: opts.raw ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body)),
    });
    const text = await res.text();
    return { status: res.status, body: JSON.parse(text) as any, text, headers: res.headers };
  };
}

/** An in-process service on its own SQLite file, on the shared IdP and STS; `oidc` overrides the IdP settings. */
async function startApiServer(o: {
  issuer: string; sts: string; iam: string; oidc?: Record<string, unknown>; policiesDir?: string; issuePerMinute?: number; now?: () => number;
  stsTimeoutMs?: number; auth?: Record<string, unknown>; tokens?: Record<string, unknown>; dbPath?: string; logFile?: string;
}): Promise<{ server: RunningServer; dbPath: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'broker-api-'));
  const dbPath = o.dbPath ?? join(dir, 'broker.db');
  const config = parseServerConfig({
    listen: { host: '127.0.0.1', port: 0 },
    policiesDir: o.policiesDir ?? POLICIES_DIR,
    store: { sqlite: dbPath, busyTimeoutMs: 300 },
    // RS256 only: the IdP also publishes an ES256 key, so a genuine ES256 token tests the allowlist.
    oidc: { issuer: o.issuer, audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli', allowInsecureHttp: true, ...o.oidc },
    tokens: { signingKeys: 'ephemeral', ...o.tokens },
    aws: { region: 'us-east-1', stsEndpoint: o.sts, iamEndpoint: o.iam, checkTrustAtStartup: false, ...(o.stsTimeoutMs ? { requestTimeoutMs: o.stsTimeoutMs } : {}) },
    limits: { issuePerMinute: o.issuePerMinute ?? 30, auth: { trustedProxyHops: 1, ...o.auth } },
    // Not about confirmation (test/start-requests.test.ts is).
    confirm: { default: 'none' },
  }, dir);
  const log = o.logFile ? createLogger({ level: 'info', destination: openSync(o.logFile, 'a') }) : createLogger({ level: 'silent' });
  const server = await startServer(config, { log, ...(o.now ? { now: o.now } : {}) });
  return { server, dbPath };
}

/** The audit records of a store, read as an auditor would (a second connection to the file). */
async function auditOf(dbPath: string) {
  const store = new SqliteStore(dbPath);
  try {
    return await store.auditLog.records(0, 100_000);
  } finally {
    await store.close();
  }
}

describe('broker service API', () => {
  let moto: Awaited<ReturnType<typeof startMoto>>;
  let proxy: Awaited<ReturnType<typeof startRecordingProxy>>;
  let idp: Awaited<ReturnType<typeof startIdp>>;
  let server: RunningServer;
  let dbPath: string;
  const tokens: Record<string, string> = {};

  const call = client(() => server.url);
  const loginAs = async (email: string) => {
    const r = await call('POST', '/v1/auth/token', { body: { id_token: await idp.loginAs(email) } });
    assert.equal(r.status, 200, r.text);
    return r.body.access_token as string;
  };
  const start = (who: string, body: Record<string, unknown>) => call('POST', '/v1/sessions', { token: tokens[who], body });

  before(async () => {
    moto = await startMoto();
    proxy = await startRecordingProxy(moto.url);
    idp = await startIdp({
      users: [
        ...DEFAULT_USERS,
        // The IdP itself says this address is not verified (oidc-provider emits email_verified: false).
        { email: 'dave@example.com', name: 'Dave', groups: ['developers'], emailVerified: false },
      ],
    });
    process.env.AWS_ACCESS_KEY_ID = 'testing';
    process.env.AWS_SECRET_ACCESS_KEY = 'testing';
    ({ server, dbPath } = await startApiServer({ issuer: idp.issuer, sts: proxy.url, iam: moto.url }));
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
    /** The reason the service recorded for the last refused login (clients only see the fixed message). */
    const lastDenial = async () => (await auditOf(dbPath)).filter((r) => r.event === 'login' && r.decision === 'denied').at(-1)?.reason;
    /**
     * Refused with the fixed 401, and audited with `reason`: each hostile token fails for its own
     * flaw, not for an incidental one (a token with a wrong `iss` signed by a random key would
     * "pass" a wrong-issuer test while being refused for its signature).
     */
    const hostile = async (label: string, token: () => Promise<string> | string, reason: string) => {
      const r = await call('POST', '/v1/auth/token', { body: { id_token: await token() } });
      assert.equal(r.status, 401, `${label}: ${r.text}`);
      assert.equal(r.body.code, 'unauthenticated');
      assert.equal(r.body.message, 'ID token rejected', 'fixed message: the client learns nothing about why');
      assert.equal(r.headers.get('www-authenticate'), 'Bearer error="invalid_token"');
      assert.equal(await lastDenial(), `ID token rejected: ${reason}`, label);
      return r;
    };
    /** The control: the same kind of token without the flaw is accepted. */
    const accepted = async (token: string) => {
      const r = await call('POST', '/v1/auth/token', { body: { id_token: token } });
      assert.equal(r.status, 200, r.text);
      return r.body as { developer: string; groups: string[]; access_token: string };
    };
    it('rejects a token signed by another key', async () => { await hostile('forged', () => forgeIdToken({ issuer: idp.issuer, audience: 'broker-cli', email: 'alice@example.com', groups: ['developers'] }), 'signature invalid'); });
    it('rejects alg none', async () => { await hostile('alg none', () => unsignedIdToken({ issuer: idp.issuer, audience: 'broker-cli', email: 'alice@example.com', groups: ['developers'] }), 'algorithm not allowed'); });
    it('rejects a wrong audience', async () => { await hostile('aud', async () => idp.loginAs('alice@example.com', { audience: 'another-client' }), 'claim aud invalid'); });
    it('rejects a wrong issuer, signed with the IdP\'s own key', async () => {
      const evil = await idp.issueIdToken('alice@example.com', { issuer: 'http://127.0.0.1:1/evil' });
      assert.equal(peekClaims(evil).iss, 'http://127.0.0.1:1/evil');
      await hostile('iss', () => evil, 'claim iss invalid');
      await accepted(await idp.issueIdToken('alice@example.com'));
    });
    it('rejects a genuine IdP token whose alg is outside the configured allowlist (ES256 when only RS256 is allowed)', async () => {
      // The IdP publishes its ES256 key in its JWKS: the token verifies with it, so only the allowlist refuses it.
      await hostile('alg', () => idp.issueIdToken('alice@example.com', { alg: 'ES256' }), 'algorithm not allowed');
      await accepted(await idp.issueIdToken('alice@example.com', { alg: 'RS256' }));
    });
    it('rejects an expired token', async () => { await hostile('expired', async () => idp.loginAs('alice@example.com', { expiresInSeconds: -600 }), 'expired'); });
    it('refuses a user whose email the IdP has not verified, saying why', async () => {
      // A complete device-flow login at the real IdP, which says email_verified: false for Dave.
      const idToken = await idp.loginAs('dave@example.com');
      assert.equal(peekClaims(idToken).email_verified, false);
      const r = await hostile('unverified', () => idToken, 'email not verified');
      assert.match(r.body.hint, /email address is verified \(email_verified is not true\)/);
      // Without the claim at all, the email is not verified either.
      const noClaim = await idp.issueIdToken('alice@example.com', { claims: { email_verified: undefined } });
      assert.ok(!('email_verified' in peekClaims(noClaim)));
      await hostile('no email_verified', () => noClaim, 'email not verified');
    });
    it('records the denials in the audit log, without the token', async () => {
      const store = new SqliteStore(dbPath);
      const denied = (await store.auditLog.records()).filter((r) => r.event === 'login' && r.decision === 'denied');
      await store.close();
      assert.ok(denied.length >= 8, `${denied.length} login denials`);
      assert.ok(denied.every((r) => !/eyJ/.test(JSON.stringify(r))), 'no JWT in the audit log');
    });
    it('rejects a token older than oidc.maxIdTokenAge (10 min by default), though it has not expired', async () => {
      const old = await idp.issueIdToken('alice@example.com', { iatSecondsFromNow: -11 * 60, expSecondsFromNow: 3600 });
      await hostile('old', () => old, 'too old (iat)');
      await accepted(await idp.issueIdToken('alice@example.com', { iatSecondsFromNow: -5 * 60, expSecondsFromNow: 3600 }));
    });
    it('rejects an access token posing as an ID token (typ at+jwt, RFC 9068 §4), signed by the IdP for our audience', async () => {
      await hostile('at+jwt', () => idp.issueIdToken('alice@example.com', { typ: 'at+jwt' }), 'typ at+jwt (an access token)');
      await hostile('application/at+jwt', () => idp.issueIdToken('alice@example.com', { typ: 'application/AT+JWT' }), 'typ at+jwt (an access token)');
    });
    it('with several audiences requires azp naming the CLI client, and a present azp must name it (OIDC Core 3.1.3.7)', async () => {
      const audience = ['broker-cli', 'another-client'];
      await hostile('several aud, no azp', () => idp.issueIdToken('alice@example.com', { audience }), 'claim azp missing (several audiences)');
      await hostile('several aud, azp another', () => idp.issueIdToken('alice@example.com', { audience, claims: { azp: 'another-client' } }), 'claim azp invalid');
      await hostile('one aud, azp another', () => idp.issueIdToken('alice@example.com', { claims: { azp: 'another-client' } }), 'claim azp invalid');
      await accepted(await idp.issueIdToken('alice@example.com', { audience, claims: { azp: 'broker-cli' } }));
      await accepted(await idp.issueIdToken('alice@example.com', { claims: { azp: 'broker-cli' } }));
    });
    it('accepts each ID token once, by its jti or else its digest, remembered in the store (a second service on it refuses too)', async () => {
      const token = await idp.issueIdToken('alice@example.com');
      await accepted(token);
      await hostile('again', () => token, 'already used');
      const noJti = await idp.issueIdToken('alice@example.com', { claims: { jti: undefined } });
      assert.ok(!('jti' in peekClaims(noJti)));
      await accepted(noJti);
      await hostile('again, no jti', () => noJti, 'already used');
      // A restart or a replica on the same store knows them.
      const replica = await startApiServer({ issuer: idp.issuer, sts: proxy.url, iam: moto.url, dbPath });
      try {
        for (const t of [token, noJti]) {
          const r = await client(() => replica.server.url)('POST', '/v1/auth/token', { body: { id_token: t } });
          assert.equal(r.status, 401, r.text);
        }
      } finally {
        await replica.server.stop();
      }
      const db = new DatabaseSync(dbPath);
      const keys = (db.prepare('SELECT key FROM seen_id_tokens').all() as { key: string }[]).map((r) => r.key);
      db.close();
      assert.ok(keys.length >= 2 && keys.every((k) => /^[0-9a-f]{64}$/.test(k)), 'digests only, never a token');
    });
    it('a genuine ID token refused for its DPoP proof is not spent', async () => {
      const token = await idp.loginAs('alice@example.com');
      const { key } = await generateDpopKey();
      const wrongUrl = await call('POST', '/v1/auth/token', { body: { id_token: token }, dpop: await dpopProof(key, 'POST', `${server.url}/v1/auth/refresh`) });
      assert.equal(wrongUrl.status, 401, wrongUrl.text);
      const r = await call('POST', '/v1/auth/token', { body: { id_token: token }, dpop: await dpopProof(key, 'POST', `${server.url}/v1/auth/token`) });
      assert.equal(r.status, 200, r.text);
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
    /** Refreshes with the current refresh token; a success rotates it (the next one is kept). */
    const refresh = async (dpop?: string) => {
      const r = await call('POST', '/v1/auth/refresh', { body: { refresh_token: refreshToken }, ...(dpop ? { dpop } : {}) });
      if (r.status === 200) refreshToken = r.body.refresh_token;
      return r;
    };
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
    it('audits refreshes, granted and refused, without tokens', async () => {
      const store = new SqliteStore(dbPath);
      const records = (await store.auditLog.records()).filter((r) => r.event === 'token.refresh');
      await store.close();
      assert.ok(records.some((r) => r.decision === 'allowed') && records.some((r) => r.decision === 'denied'));
      assert.ok(!JSON.stringify(records).includes(refreshToken));
      assert.ok(!/eyJ/.test(JSON.stringify(records)), 'no JWT in the audit log');
    });
  });

  describe('logins rotate their refresh token, and a spent one revokes the login (RFC 9700 §4.14.2)', () => {
    const url = (path: string) => `${server.url}${path}`;
    type Key = Awaited<ReturnType<typeof generateDpopKey>>['key'];
    const proof = (key: Key, path: string) => dpopProof(key, 'POST', url(path));
    const loginWithKey = async (email: string) => {
      const { key } = await generateDpopKey();
      const r = await call('POST', '/v1/auth/token', { body: { id_token: await idp.loginAs(email) }, dpop: await proof(key, '/v1/auth/token') });
      assert.equal(r.status, 200, r.text);
      return { key, body: r.body as { access_token: string; refresh_token: string; login: { id: string; generation: number; expiresAt: string } } };
    };
    const refreshWith = async (key: Key, token: string) => call('POST', '/v1/auth/refresh', { body: { refresh_token: token }, dpop: await proof(key, '/v1/auth/refresh') });
    const logoutWith = async (key: Key, token: string) => call('POST', '/v1/auth/logout', { body: { refresh_token: token }, dpop: await proof(key, '/v1/auth/logout') });
    const startLogs = (token: string) => call('POST', '/v1/sessions', { token, body: { template: 'read-cloudwatch-logs', params: logParams() } });

    it('every refresh answers a new refresh token of the same login, whose end never moves', async () => {
      const { key, body } = await loginWithKey('carol@example.com');
      assert.equal(body.login.generation, 0);
      const first = peekClaims(body.refresh_token);
      assert.equal(first.groups, undefined, 'no groups in the refresh token: they stay with the login, on the service');
      assert.equal(first.email, undefined);
      let token = body.refresh_token;
      const seen = new Set([token]);
      for (let generation = 1; generation <= 3; generation++) {
        const r = await refreshWith(key, token);
        assert.equal(r.status, 200, r.text);
        assert.ok(!seen.has(r.body.refresh_token), 'a new refresh token every time');
        seen.add(r.body.refresh_token);
        assert.deepEqual(r.body.login, { id: body.login.id, generation, expiresAt: body.login.expiresAt });
        assert.equal(peekClaims(r.body.refresh_token).exp, first.exp, 'rotation never extends the login');
        token = r.body.refresh_token;
      }
    });

    it('a spent refresh token presented again revokes the whole login, audited as reuse; nothing of the login works after', async () => {
      const { key, body } = await loginWithKey('alice@example.com');
      const r1 = await refreshWith(key, body.refresh_token);
      assert.equal(r1.status, 200, r1.text);
      const r2 = await refreshWith(key, r1.body.refresh_token);
      assert.equal(r2.status, 200, r2.text);
      const access = r2.body.access_token as string;
      assert.equal((await call('GET', '/v1/sessions', { token: access })).status, 200);
      const seqBefore = (await auditOf(dbPath)).at(-1)!.seq;

      // Someone replays the first token (a copy of the keychain): reuse.
      const replay = await refreshWith(key, body.refresh_token);
      assert.equal(replay.status, 401, replay.text);
      assert.match(replay.body.message, /already used, so its login is now revoked/);
      assert.match(replay.body.hint, /log in again: broker login/);
      const revocations = (await auditOf(dbPath)).filter((x) => x.seq > seqBefore && x.event === 'login.revoke');
      assert.deepEqual(revocations.map((x) => [x.decision, x.developer, x.reason, x.detail?.family, x.detail?.reuseDetected]),
        [['revoked', 'alice@example.com', 'reuse of a spent refresh token', body.login.id, true]]);

      // The current token is refused too: the service cannot tell the holders apart.
      const current = await refreshWith(key, r2.body.refresh_token);
      assert.equal(current.status, 401, current.text);
      assert.match(current.body.message, /this login was revoked \(reuse of a spent refresh token\)/);
      // And the access token it bought, from the next request on: no STS credentials under it.
      const before = assumeRoleCalls(proxy.requests).length;
      const started = await startLogs(access);
      assert.equal(started.status, 401, started.text);
      assert.equal(assumeRoleCalls(proxy.requests).length, before);
      const store = new SqliteStore(dbPath);
      assert.equal(await store.auditLog.verify(), null, 'hash chain intact');
      await store.close();
    });

    it('checks the refresh token before the DPoP proof: a garbage token uses up no proof', async () => {
      const { key, body } = await loginWithKey('alice@example.com');
      const p = await proof(key, '/v1/auth/refresh');
      const garbage = await call('POST', '/v1/auth/refresh', { body: { refresh_token: 'not.a.token' }, dpop: p });
      assert.equal(garbage.status, 401, garbage.text);
      const real = await call('POST', '/v1/auth/refresh', { body: { refresh_token: body.refresh_token }, dpop: p });
      assert.equal(real.status, 200, `the proof is still unused: ${real.text}`);
    });

    it('logout revokes the login on the service: a refresh token read before it buys nothing after it, nor its access token', async () => {
      const { key, body } = await loginWithKey('alice@example.com');
      const copy = body.refresh_token; // read before the logout (a backup, a synced keychain)
      const r1 = await refreshWith(key, copy);
      assert.equal(r1.status, 200, r1.text);
      const seqBefore = (await auditOf(dbPath)).at(-1)!.seq;
      const out = await logoutWith(key, r1.body.refresh_token);
      assert.equal(out.status, 200, out.text);
      assert.deepEqual(out.body, { revoked: true, login: { id: body.login.id, expiresAt: body.login.expiresAt } });
      const recorded = (await auditOf(dbPath)).filter((x) => x.seq > seqBefore && x.event === 'login.revoke');
      assert.deepEqual(recorded.map((x) => [x.decision, x.developer, x.reason, x.detail?.family]), [['revoked', 'alice@example.com', 'logout', body.login.id]]);

      for (const [label, token] of [['the copy', copy], ['the current token', r1.body.refresh_token]] as const) {
        const r = await refreshWith(key, token);
        assert.equal(r.status, 401, `${label}: ${r.text}`);
        assert.ok(!('access_token' in r.body));
      }
      const before = assumeRoleCalls(proxy.requests).length;
      assert.equal((await startLogs(r1.body.access_token)).status, 401, 'the access token bought before logout is refused');
      assert.equal(assumeRoleCalls(proxy.requests).length, before, 'no STS credentials');
      const again = await logoutWith(key, copy);
      assert.equal(again.status, 200, 'any token of the login, spent too, may end it');
      assert.equal(again.body.revoked, false, 'already revoked');
    });

    it('only the device key logs a login out', async () => {
      const { key, body } = await loginWithKey('carol@example.com');
      const other = await generateDpopKey();
      const r = await logoutWith(other.key, body.refresh_token);
      assert.equal(r.status, 401, r.text);
      assert.equal((await refreshWith(key, body.refresh_token)).status, 200, 'the login lives on');
    });
  });

  describe('template access is re-checked at every issue, with the login\'s groups', () => {
    it('a template whose allowed groups changed issues nothing more under a session started before (403, audited)', async () => {
      const store = new SqliteStore(join(mkdtempSync(join(tmpdir(), 'broker-recheck-')), 'broker.db'));
      const sts = new STSClient({ region: 'us-east-1', endpoint: proxy.url, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });
      const templates = loadTemplatesOrThrow(POLICIES_DIR);
      const sessions = new TaskSessionService({ store, templates: new TemplateCatalog(templates), issuer: new StsCredentialIssuer(sts, 8000), log: createLogger({ level: 'silent' }), maxActiveSessions: 5 });
      const alice = { id: 'alice@example.com', email: 'alice@example.com', groups: ['developers'] };
      try {
        const { session } = await sessions.start(alice, { template: 'read-cloudwatch-logs', params: logParams(), reason: '', agent: 'aider' });
        assert.ok((await sessions.reissue(alice, session.id)).credentials.accessKeyId);
        // The operator narrows the template (a restart with edited templates): only admins now.
        const t = templates.get('read-cloudwatch-logs')!;
        templates.set(t.name, { ...t, allowed: { groups: ['admins'], emails: [] } });
        const before = assumeRoleCalls(proxy.requests).length;
        await assert.rejects(sessions.reissue(alice, session.id), (e: unknown) => e instanceof Error && (e as { code?: string }).code === 'forbidden'
          && /alice@example\.com may no longer use "read-cloudwatch-logs"/.test(e.message));
        assert.equal(assumeRoleCalls(proxy.requests).length, before, 'nothing asked of STS');
        const trail = (await store.auditLog.records()).filter((x) => x.sessionId === session.id).map((x) => `${x.event}:${x.decision}`);
        assert.deepEqual(trail.slice(-1), ['credentials.reissue:denied']);
      } finally {
        await store.close();
        sts.destroy();
      }
    });

    it('the groups are the login\'s, kept on the service since login: changed there, the next access token and issue follow them', async () => {
      const { key } = await generateDpopKey();
      const login = await call('POST', '/v1/auth/token', { body: { id_token: await idp.loginAs('alice@example.com') }, dpop: await dpopProof(key, 'POST', `${server.url}/v1/auth/token`) });
      assert.equal(login.status, 200, login.text);
      const started = await call('POST', '/v1/sessions', { token: login.body.access_token, body: { template: 'deploy-lambda', params: { function: 'recheck' } } });
      assert.equal(started.status, 201, started.text);
      // What an admin's "remove from group" would change (no route for it yet): the login's record.
      const db = new DatabaseSync(dbPath);
      db.prepare('UPDATE refresh_token_families SET groups = ? WHERE id = ?').run(JSON.stringify(['contractors']), login.body.login.id);
      db.close();
      const r = await call('POST', '/v1/auth/refresh', { body: { refresh_token: login.body.refresh_token }, dpop: await dpopProof(key, 'POST', `${server.url}/v1/auth/refresh`) });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual((await call('GET', '/v1/whoami', { token: r.body.access_token })).body.groups, ['contractors']);
      const re = await call('POST', `/v1/sessions/${started.body.session.id}/credentials`, { token: r.body.access_token });
      assert.equal(re.status, 403, re.text);
      assert.equal(re.body.code, 'forbidden');
      const last = (await auditOf(dbPath)).filter((x) => x.sessionId === started.body.session.id).at(-1)!;
      assert.deepEqual([last.event, last.decision, last.developer], ['credentials.reissue', 'denied', 'alice@example.com']);
      assert.equal((await call('DELETE', `/v1/sessions/${started.body.session.id}`, { token: r.body.access_token })).status, 200);
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
      assert.match(r.body.hint, /broker templates$/, 'names the command that lists them');
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
      const extra = await start('alice', { template: 'deploy-lambda', params: {}, surprise: 1, other: 2 });
      assert.equal(extra.status, 400);
      // Each unknown key at its own pointer (RFC 6901), not at the object holding it.
      assert.deepEqual(extra.body.details, [{ path: '/surprise', message: 'unknown field' }, { path: '/other', message: 'unknown field' }], extra.text);
      // The whole body is "" (RFC 6901 §5), not "/" (which names the key "").
      const notObject = await call('POST', '/v1/sessions', { token: tokens.alice, raw: '[1]' });
      assert.equal(notObject.status, 400);
      assert.deepEqual(notObject.body.details.map((d: { path: string }) => d.path), [''], notObject.text);
      const slashKey = await start('alice', { template: 'deploy-lambda', 'a/b~c': 1 });
      assert.deepEqual(slashKey.body.details.map((d: { path: string }) => d.path), ['/a~1b~0c'], 'escaped per RFC 6901 §3');
      const ttl = await start('alice', { template: 'deploy-lambda', params: { function: 'a' }, ttl: '5m' });
      assert.equal(ttl.status, 400);
      assert.deepEqual(ttl.body.details.map((d: { path: string }) => d.path), ['/ttl']);
      const agent = await start('alice', { template: 'deploy-lambda', params: { function: 'a' }, agent: 'evil;rm -rf' });
      assert.equal(agent.status, 400);
      assert.deepEqual(agent.body.details.map((d: { path: string }) => d.path), ['/agent']);
      const huge = await call('POST', '/v1/sessions', { token: tokens.alice, raw: JSON.stringify({ template: 'x'.repeat(100_000) }) });
      assert.equal(huge.status, 413, 'a body over 64 KiB: 413 payload_too_large (test/transport.test.ts)');
      assert.equal(huge.body.code, 'payload_too_large');
      for (const r of [bad, extra, notObject, slashKey, ttl, agent, huge]) assert.ok(!/at .*\.js:\d+/.test(r.text), 'no stack trace');
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
      const trail = (await store.auditLog.records()).filter((x) => x.sessionId === session.id);
      assert.equal(await store.auditLog.verify(), null, 'hash chain intact');
      await store.close();
      // Carol's attempt on Alice's session is part of its trail too: audited as her denial.
      assert.deepEqual(trail.map((x) => `${x.developer}:${x.event}:${x.decision}`), [
        'alice@example.com:session.start:allowed', 'alice@example.com:credentials.issue:issued',
        'alice@example.com:credentials.reissue:issued', 'carol@example.com:credentials.reissue:denied',
        'alice@example.com:session.end:ended',
        // Her own end also denies the session's keys on the role (revokeOnEnd, test/revoke-on-end.test.ts).
        'alice@example.com:session.revoke:pending', 'alice@example.com:credentials.reissue:denied',
      ]);
      assert.equal(trail[1]!.accessKeyId, credentials.AccessKeyId);
      const dump = JSON.stringify(trail);
      for (const secret of [credentials.SecretAccessKey, credentials.SessionToken, re.body.credentials.SecretAccessKey]) {
        assert.ok(!dump.includes(secret), 'no secret in the audit log');
      }
    });
    it('of concurrent starts of one template, exactly one opens a session; the others are refused (409) and audited', async () => {
      const before = (await auditOf(dbPath)).length;
      const body = { template: 'read-cloudwatch-logs', params: { logGroup: '/aws/lambda/checkout-api' }, agent: 'race' };
      const all = await Promise.all(Array.from({ length: 6 }, () => start('alice', body)));
      assert.deepEqual(all.map((r) => r.status).sort(), [201, 409, 409, 409, 409, 409], all.map((r) => r.text).join('\n'));
      const winner = all.find((r) => r.status === 201)!;
      const open = (await call('GET', '/v1/sessions', { token: tokens.alice })).body.sessions as { id: string; template: string }[];
      assert.deepEqual(open.filter((x) => x.template === 'read-cloudwatch-logs').map((x) => x.id), [winner.body.session.id]);
      const starts = (await auditOf(dbPath)).slice(before).filter((x) => x.event === 'session.start');
      assert.deepEqual(starts.map((x) => x.decision).sort(), ['allowed', 'denied', 'denied', 'denied', 'denied', 'denied']);
      assert.equal((await call('DELETE', `/v1/sessions/${winner.body.session.id}`, { token: tokens.alice })).status, 200);
    });
    it('the domain takes one start per developer at a time: of starts issued at once, one opens a session', async () => {
      // In-process, all six reach the domain in the same tick (over HTTP they rarely do): the checks
      // and the session's record of one start never interleave with another's.
      const store = new SqliteStore(join(mkdtempSync(join(tmpdir(), 'broker-race-')), 'broker.db'));
      const sts = new STSClient({ region: 'us-east-1', endpoint: proxy.url, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });
      const sessions = new TaskSessionService({
        store, templates: new TemplateCatalog(loadTemplatesOrThrow(POLICIES_DIR)), issuer: new StsCredentialIssuer(sts, 8000), log: createLogger({ level: 'silent' }), maxActiveSessions: 5,
      });
      const alice = { id: 'alice@example.com', email: 'alice@example.com', groups: ['developers'] };
      try {
        const all = await Promise.allSettled(Array.from({ length: 6 }, () => sessions.start(alice, {
          template: 'read-cloudwatch-logs', params: { logGroup: '/aws/lambda/checkout-api' }, reason: '', agent: 'race',
        })));
        assert.equal(all.filter((r) => r.status === 'fulfilled').length, 1, all.map((r) => (r.status === 'rejected' ? String(r.reason) : 'started')).join('\n'));
        assert.ok(all.every((r) => r.status === 'fulfilled' || (r.reason instanceof Error && /already active/.test(r.reason.message))));
        assert.equal((await store.sessions.active(alice.id)).length, 1);
      } finally {
        await store.close();
        sts.destroy();
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
      for (let i = 0; i < 32; i++) last = await start('carol', { template: 'no-such-template' });
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

    it('withholds credentials STS already issued when the audit log fails before their record, and leaves no session blocking a later start', async () => {
      const before = assumeRoleCalls(proxy.requests).length;
      const lastSeq = (await auditOf(dbPath)).at(-1)?.seq ?? 0;
      // The store is locked the moment the broker's AssumeRole reaches STS: moto still answers (the
      // keys exist at AWS), and the broker's next write, the `issued` record, cannot be committed.
      let locker: DatabaseSync | undefined;
      proxy.onRequest((req) => {
        if (req.action !== 'AssumeRole' || locker) return;
        locker = new DatabaseSync(dbPath, { timeout: 0 });
        locker.exec('BEGIN EXCLUSIVE');
      });
      let r;
      try {
        r = await start('alice', { template: 'read-cloudwatch-logs', params: logParams() });
      } finally {
        proxy.onRequest(undefined);
        locker?.exec('ROLLBACK');
        locker?.close();
      }
      assert.ok(locker, 'the lock was taken when AssumeRole was called');
      assert.equal(assumeRoleCalls(proxy.requests).length, before + 1, 'STS was called: the failure came after it');
      assert.equal(r.status, 503, r.text);
      assert.equal(r.body.code, 'audit_unavailable');
      assert.match(r.body.message, /could not record credentials\.issue issued; nothing was issued/);
      assert.ok(!('credentials' in r.body) && !/AccessKeyId|SecretAccessKey|SessionToken|ASIA/.test(r.text), 'no credential in the response');

      // The store takes writes again: a new start is not refused as a duplicate (409) of the failed one.
      const again = await start('alice', { template: 'read-cloudwatch-logs', params: logParams() });
      assert.equal(again.status, 201, again.text);
      const list = await call('GET', '/v1/sessions', { token: tokens.alice });
      assert.deepEqual(list.body.sessions.map((x: { id: string }) => x.id), [again.body.session.id], 'only the new session is active');

      // The failed session: allowed, then ended as failed; no `issued` record, so its keys were never handed out.
      const failedId = (await auditOf(dbPath)).find((x) => x.seq > lastSeq && x.event === 'session.start' && x.decision === 'allowed')?.sessionId;
      assert.ok(failedId && failedId !== again.body.session.id);
      const trail = (await auditOf(dbPath)).filter((x) => x.sessionId === failedId).map((x) => `${x.event}:${x.decision}`);
      assert.deepEqual(trail, ['session.start:allowed', 'session.end:ended']);
      assert.match((await auditOf(dbPath)).find((x) => x.sessionId === failedId && x.event === 'session.end')!.reason!, /^first issue failed: the audit log could not record/);
      const reissue = await call('POST', `/v1/sessions/${failedId}/credentials`, { token: tokens.alice });
      assert.equal(reissue.status, 409, 'nothing is issued under it afterwards');
      assert.equal((await call('DELETE', `/v1/sessions/${again.body.session.id}`, { token: tokens.alice })).status, 200);
    });

    it('a hung STS becomes a clear 503 within aws.requestTimeoutMs, and the session it was for is ended', { timeout: 20_000 }, async () => {
      // STS accepts the AssumeRole and never answers (the proxy holds it until the test lets go).
      let release!: () => void;
      const held = new Promise<void>((r) => { release = r; });
      const hung = await startApiServer({ issuer: idp.issuer, sts: proxy.url, iam: moto.url, stsTimeoutMs: 800 });
      const hungCall = client(() => hung.server.url);
      const login = await hungCall('POST', '/v1/auth/token', { body: { id_token: await idp.loginAs('alice@example.com') } });
      assert.equal(login.status, 200, login.text);
      const token = login.body.access_token as string;
      proxy.onRequest((req) => (req.action === 'AssumeRole' ? held : undefined));
      try {
        const t0 = performance.now();
        const r = await hungCall('POST', '/v1/sessions', { token, body: { template: 'read-cloudwatch-logs', params: logParams() } });
        const elapsed = performance.now() - t0;
        assert.equal(r.status, 503, r.text);
        assert.equal(r.body.code, 'upstream_unavailable');
        assert.match(r.body.message, /STS did not answer AssumeRole within 0\.8s/);
        assert.match(r.body.hint, /aws\.requestTimeoutMs/);
        assert.ok(elapsed < 5000, `answered in ${elapsed.toFixed(0)} ms, not after the client's own timeout`);
        const trail = (await auditOf(hung.dbPath)).filter((x) => x.event !== 'login').map((x) => `${x.event}:${x.decision}`);
        assert.deepEqual(trail, ['session.start:allowed', 'credentials.issue:failed', 'session.end:ended']);
        const list = await hungCall('GET', '/v1/sessions', { token });
        assert.deepEqual(list.body.sessions, [], 'no session left open');
      } finally {
        proxy.onRequest(undefined);
        release();
        await hung.server.stop();
      }
    });
  });

  describe('IdP claims: a configured groups claim, and emails only when verified', () => {
    // As Auth0 and others do: groups in a namespaced claim; the identity from `sub`.
    const GROUPS_CLAIM = 'https://broker.example.com/groups';
    let other: RunningServer;
    const call2 = client(() => other.url);
    const login2 = async (idToken: string) => {
      const r = await call2('POST', '/v1/auth/token', { body: { id_token: idToken } });
      assert.equal(r.status, 200, r.text);
      return r.body.access_token as string;
    };
    const startable = async (token: string) => (await call2('GET', '/v1/templates', { token })).body.templates.map((t: { name: string }) => t.name);
    before(async () => {
      ({ server: other } = await startApiServer({ issuer: idp.issuer, sts: proxy.url, iam: moto.url, oidc: { groupsClaim: GROUPS_CLAIM, identityClaim: 'sub' } }));
    });
    after(async () => { await other?.stop(); });

    it('reads group membership from the configured claim, and ignores "groups"', async () => {
      // Bob's `groups` say contractors; the configured claim says developers: the claim decides.
      const bob = await login2(await idp.issueIdToken('bob@example.com', { claims: { [GROUPS_CLAIM]: ['developers'] } }));
      assert.deepEqual((await call2('GET', '/v1/whoami', { token: bob })).body.groups, ['developers']);
      assert.ok((await startable(bob)).includes('deploy-lambda'));
      // Alice's `groups` say developers, but she has nothing in the configured claim.
      const alice = await login2(await idp.loginAs('alice@example.com'));
      const me = (await call2('GET', '/v1/whoami', { token: alice })).body;
      assert.equal(me.id, 'alice@example.com', 'identity from sub');
      assert.deepEqual(me.groups, []);
      assert.deepEqual(await startable(alice), []);
    });

    it('matches allowed.emails only with email_verified: true', async () => {
      // s3-artifacts allows release-bot@example.com by email, and no group of hers.
      const verified = await login2(await idp.issueIdToken('release-bot@example.com'));
      assert.equal((await call2('GET', '/v1/whoami', { token: verified })).body.email, 'release-bot@example.com');
      assert.deepEqual(await startable(verified), ['s3-artifacts']);
      // The same address unverified: she may still log in (her identity is `sub`), but the email grants nothing.
      const unverified = await login2(await idp.issueIdToken('release-bot@example.com', { emailVerified: false }));
      assert.equal((await call2('GET', '/v1/whoami', { token: unverified })).body.email, '');
      assert.deepEqual(await startable(unverified), []);
      const r = await call2('POST', '/v1/sessions', { token: unverified, body: { template: 's3-artifacts', params: { prefix: 'builds' } } });
      assert.equal(r.status, 403, r.text);
      assert.match(r.body.message, /may not start "s3-artifacts": not in its allowed groups or emails/);
    });
  });

  describe('DurationSeconds = min(requested, template max, credential lifetime), at least 900 s', () => {
    let svc: RunningServer;
    let svcDb: string;
    let offsetMs = 0;
    const call3 = client(() => svc.url);
    let token: string;
    let policiesDir: string;
    const lastAssumeRole = () => assumeRoleCalls(proxy.requests).at(-1)!;
    const startTask = (template: string, ttl?: string) => call3('POST', '/v1/sessions', {
      token, body: { template, params: template === 'capped' ? {} : { function: 'checkout-api' }, ...(ttl ? { ttl } : {}) },
    });
    const end = async (id: string) => assert.equal((await call3('DELETE', `/v1/sessions/${id}`, { token })).status, 200);
    const sessionSeconds = (session: { createdAt: string; expiresAt: string }) => (Date.parse(session.expiresAt) - Date.parse(session.createdAt)) / 1000;

    before(async () => {
      // The shipped templates, plus one whose maxDuration is below the credential lifetime default (1 h).
      policiesDir = mkdtempSync(join(tmpdir(), 'broker-api-policies-'));
      for (const f of readdirSync(POLICIES_DIR)) copyFileSync(join(POLICIES_DIR, f), join(policiesDir, f));
      writeFileSync(join(policiesDir, 'capped.yaml'), [
        'name: capped', 'description: a short task', 'allowed: { groups: [developers] }', 'session: { maxDuration: 20m }',
        'aws:', '  roleArn: arn:aws:iam::123456789012:role/broker-capped', '  region: eu-west-1',
        '  policy: { Version: "2012-10-17", Statement: [{ Effect: Allow, Action: "s3:ListAllMyBuckets", Resource: "*" }] }', '',
      ].join('\n'));
      // Its own clock, so a test can move it; and its own store and rate limit.
      ({ server: svc, dbPath: svcDb } = await startApiServer({
        issuer: idp.issuer, sts: proxy.url, iam: moto.url, policiesDir, issuePerMinute: 1000, now: () => Date.now() + offsetMs,
      }));
      const r = await call3('POST', '/v1/auth/token', { body: { id_token: await idp.loginAs('carol@example.com') } });
      assert.equal(r.status, 200, r.text);
      token = r.body.access_token;
    });
    after(async () => { await svc?.stop(); });

    it('the requested length wins when it is the shortest (30m → 1800 s)', async () => {
      const r = await startTask('deploy-lambda', '30m');
      assert.equal(r.status, 201, r.text);
      assert.equal(Number(lastAssumeRole().DurationSeconds), 1800);
      assert.equal(sessionSeconds(r.body.session), 1800);
      await end(r.body.session.id);
    });
    it('the template maximum wins over a longer request (capped: maxDuration 20m, ttl 2h → 1200 s)', async () => {
      const r = await startTask('capped', '2h');
      assert.equal(r.status, 201, r.text);
      assert.equal(Number(lastAssumeRole().DurationSeconds), 1200);
      assert.equal(sessionSeconds(r.body.session), 1200, 'the session itself is capped');
      await end(r.body.session.id);
    });
    it('the credential lifetime wins over a longer session (deploy-lambda: 1h credentials in a 3h session)', async () => {
      const r = await startTask('deploy-lambda', '3h');
      assert.equal(r.status, 201, r.text);
      assert.equal(Number(lastAssumeRole().DurationSeconds), 3600);
      assert.equal(sessionSeconds(r.body.session), 3 * 3600);
      await end(r.body.session.id);
    });
    it('under 900 s left, a re-issue gets STS\'s minimum 900 s and outlives the session, which the audit log records', async () => {
      const r = await startTask('deploy-lambda', '20m');
      assert.equal(r.status, 201, r.text);
      assert.equal(Number(lastAssumeRole().DurationSeconds), 1200);
      offsetMs = 15 * 60_000; // 5 minutes of the session left
      try {
        const re = await call3('POST', `/v1/sessions/${r.body.session.id}/credentials`, { token });
        assert.equal(re.status, 200, re.text);
        assert.equal(Number(lastAssumeRole().DurationSeconds), 900, 'not 300: STS refuses less than 900');
        const issued = (await auditOf(svcDb)).filter((x) => x.sessionId === r.body.session.id && x.decision === 'issued');
        assert.equal(issued[0]!.detail?.outlivesSessionSeconds, undefined, 'the first credentials end with the session');
        const outlives = Number(issued[1]!.detail?.outlivesSessionSeconds);
        assert.ok(outlives >= 599 && outlives <= 601, `outlives the session by ${outlives} s (900 - 300)`);
      } finally {
        offsetMs = 0;
        await end(r.body.session.id);
      }
    });

    it('broker policy explain computes what the service does, and refuses what it refuses', async () => {
      for (const [template, ttl] of [['deploy-lambda', undefined], ['deploy-lambda', '5m'], ['deploy-lambda', '15m'], ['deploy-lambda', '45m'],
        ['deploy-lambda', '3h'], ['deploy-lambda', '13h'], ['capped', undefined], ['capped', '2h'], ['capped', 'soon']] as const) {
        const label = `${template} --ttl ${ttl ?? '(none)'}`;
        const explained = await broker(['policy', 'explain', template, '--dir', policiesDir, '--as', 'carol@example.com', '--groups', 'developers',
          ...(template === 'capped' ? [] : ['--param', 'function=checkout-api']), ...(ttl ? ['--ttl', ttl] : []), '--json'], {});
        const api = await startTask(template, ttl);
        if (api.status === 201) {
          assert.equal(explained.code, 0, `${label}: the API accepts it, explain must too: ${explained.stderr}`);
          const x = JSON.parse(explained.stdout) as { duration: { seconds: number }; sessionSeconds: number };
          assert.equal(x.duration.seconds, Number(lastAssumeRole().DurationSeconds), label);
          assert.equal(x.sessionSeconds, sessionSeconds(api.body.session), label);
          await end(api.body.session.id);
        } else {
          assert.equal(api.status, 400, `${label}: ${api.text}`);
          assert.deepEqual(api.body.details.map((d: { path: string }) => d.path), ['/ttl']);
          assert.equal(explained.code, EXIT_CODES.invalid_request, `${label}: the API refuses it, explain must too: ${explained.stdout}`);
          // --json: the error is the document on stdout, with the API's reason.
          const { error } = JSON.parse(explained.stdout) as { error: { code: string; details: { path: string; message: string }[] } };
          assert.equal(error.code, api.body.code, label);
          assert.deepEqual(error.details, [{ path: '--ttl', message: api.body.details[0].message }], `${label}: the same reason`);
          assert.ok(explained.stderr.includes(`--ttl: ${api.body.details[0].message}`), `${label}: the same reason:\n${explained.stderr}`);
        }
      }
    });
  });

  describe('the unauthenticated edge: token buckets on /v1/auth/*, and refusals audited in aggregate', () => {
    let edge: Awaited<ReturnType<typeof startApiServer>>;
    let logFile: string;
    let stopped = false;
    const edgeCall = client(() => edge.server.url);
    /** Every /v1/auth/* answer of this service that was a refusal, counted by the test. */
    let refusals = 0;
    const authCall: Call = async (method, path, opts) => {
      const r = await edgeCall(method, path, opts);
      if (r.status >= 400) refusals++;
      return r;
    };
    const MAX_KEYS = 4;
    before(async () => {
      logFile = join(mkdtempSync(join(tmpdir(), 'broker-edge-')), 'server.log');
      edge = await startApiServer({
        issuer: idp.issuer, sts: proxy.url, iam: moto.url, logFile,
        auth: { perAddress: { burst: 5, perMinute: 6 }, global: { burst: 60, perMinute: 60 }, auditWindow: '1h', auditMaxKeys: MAX_KEYS },
      });
    });
    after(async () => { if (!stopped) await edge?.server.stop(); });
    const auditRows = async () => (await auditOf(edge.dbPath)).filter((x) => x.detail?.aggregated === true);

    it('per address: past its burst, 429 with Retry-After before the body is read or anything verified; other addresses go on', async () => {
      for (let i = 0; i < 5; i++) assert.equal((await authCall('POST', '/v1/auth/token', { raw: '{not json', address: '10.9.9.1' })).status, 400);
      const idToken = await idp.loginAs('alice@example.com');
      const limited = await authCall('POST', '/v1/auth/token', { body: { id_token: idToken }, address: '10.9.9.1' });
      assert.equal(limited.status, 429, limited.text);
      assert.equal(limited.body.code, 'rate_limited');
      assert.ok(Number(limited.headers.get('retry-after')) >= 1, 'Retry-After');
      // Refused before anything was verified: the genuine ID token it carried is still unspent.
      const elsewhere = await authCall('POST', '/v1/auth/token', { body: { id_token: idToken }, address: '10.9.9.2' });
      assert.equal(elsewhere.status, 200, elsewhere.text);
      // X-Forwarded-For entries left of the trusted hop are the client's own to write: no new bucket from them.
      const spoofed = await authCall('POST', '/v1/auth/refresh', { raw: '{}', address: '203.0.113.7, 10.9.9.1' });
      assert.equal(spoofed.status, 429, spoofed.text);
    });

    it('a single refusal is in the audit log at once: address, reason, count 1', async () => {
      const r = await authCall('POST', '/v1/auth/refresh', { body: { refresh_token: 'not.a.token' }, address: '10.9.9.3' });
      assert.equal(r.status, 401, r.text);
      const rows = (await auditRows()).filter((x) => x.detail?.address === '10.9.9.3');
      assert.equal(rows.length, 1, JSON.stringify(rows));
      assert.equal(rows[0]!.event, 'token.refresh');
      assert.equal(rows[0]!.decision, 'denied');
      assert.match(rows[0]!.reason!, /^refresh token rejected: /);
      assert.equal(rows[0]!.detail?.count, 1);
    });

    it('a flood of refusals from many addresses adds a bounded number of rows whose counts add up to every refusal; the detail is in the server log', async () => {
      const rowsBefore = (await auditOf(edge.dbPath)).length;
      const kinds = [
        { path: '/v1/auth/token', raw: '{not json' },
        { path: '/v1/auth/token', raw: JSON.stringify({ id_token: 'a.b.c' }) },
        { path: '/v1/auth/refresh', raw: JSON.stringify({ refresh_token: 'x.y.z' }) },
        { path: '/v1/auth/logout', raw: JSON.stringify({ refresh_token: 'x.y.z', extra: 1 }) },
      ];
      for (let i = 0; i < 120; i++) {
        const k = kinds[i % kinds.length]!;
        const r = await authCall('POST', k.path, { raw: k.raw, address: `10.8.${i % 30}.1` });
        assert.ok([400, 401, 429].includes(r.status), r.text);
      }
      assert.ok(edge.server, 'still up');
      // Stopping writes what is pending (as the window's end would).
      await edge.server.stop();
      stopped = true;
      const all = await auditOf(edge.dbPath);
      const aggregated = all.filter((x) => x.detail?.aggregated === true);
      const total = aggregated.reduce((n, x) => n + Number(x.detail?.count), 0);
      assert.equal(total, refusals, 'the counts add up to every refusal this service answered');
      const added = all.length - rowsBefore;
      const keys = new Set(aggregated.map((x) => JSON.stringify([x.event, x.reason, x.developer ?? x.detail?.address])));
      const reasons = new Set(aggregated.map((x) => JSON.stringify([x.event, x.reason])));
      assert.ok(keys.size <= MAX_KEYS + reasons.size, `${keys.size} keys: at most ${MAX_KEYS} plus one overflow key per reason`);
      assert.ok(added <= 2 * (MAX_KEYS + reasons.size), `${added} rows for 120 refusals`);
      assert.ok(aggregated.some((x) => x.detail?.address === '*'), 'addresses past the limit fold into *');
      assert.ok(aggregated.some((x) => x.reason === 'rate limited (all addresses)'), 'the global bucket ran out too');
      const store = new SqliteStore(edge.dbPath);
      assert.equal(await store.auditLog.verify(), null, 'hash chain intact');
      await store.close();
      const logged = readFileSync(logFile, 'utf8').split('\n').filter((l) => l.includes('"auth request refused"'));
      assert.equal(logged.length, refusals, 'one server-log line per refusal');
      assert.ok(!/eyJ/.test(JSON.stringify(aggregated)), 'no token in the audit log');
    });
  });
});

/** Valid parameters for the shipped read-cloudwatch-logs template. */
function logParams(): Record<string, string> {
  return { logGroup: '/aws/lambda/checkout-api' };
}
