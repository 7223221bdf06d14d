/**
 * The login lifecycle on the developer's side, on real peers: a private gnome-keyring, the test IdP,
 * a real `broker server` process (its access tokens live 10 s, so every daemon request refreshes and
 * rotates the refresh token) and moto. The keychain holds the login in two items; daemons write each
 * rotated refresh token back and pick up one another's; a copy of the keychain is caught at the next
 * refresh; `broker logout` revokes the login on the service, and says so when it cannot; a v1 login
 * is replaced by a new one.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { JWK } from 'jose';
import { dpopProof, generateDpopKey, importDpopKey } from '../broker/client/dpop-key.js';
import { EXIT_CODES } from '../broker/errors.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { startBrokerService } from './peers/broker-service.js';
import { broker, makeTestHome, type TestHome } from './peers/cli.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { startStack, type Stack } from './peers/stack.js';

interface Stored { v: number; developer: string; refreshToken: string; login: { id: string; generation: number; expiresAt: string } }

describe('the login lifecycle: rotation, daemons sharing a login, copies, logout', () => {
  let stack: Stack;
  let keyring: TestKeyring;
  let m: TestHome;
  let env: Record<string, string>;
  /** A second runtime directory of the same developer on the same machine: another daemon. */
  let envB: Record<string, string>;
  const others: TestHome[] = [];

  const stored = (url = stack.svc.url): Stored => JSON.parse(keyring.read(`login:${url}`)!) as Stored;
  const deviceKey = (url = stack.svc.url): JWK => JSON.parse(keyring.read(`device-key:${url}`)!) as JWK;
  const login = async (email: string, e = env, server = stack.svc.url) => {
    const file = join(mkdtempSync(join(tmpdir(), 'broker-idtoken-')), 'id.jwt');
    writeFileSync(file, await stack.idp.loginAs(email), { mode: 0o600 });
    try {
      const r = await broker(['login', '--server', server, '--id-token-file', file], e);
      assert.equal(r.code, 0, r.stderr);
    } finally {
      rmSync(join(file, '..'), { recursive: true, force: true });
    }
  };
  /** A request through the daemon of `e` that needs an access token (each one a refresh here). */
  const whoami = (e = env) => broker(['whoami', '--json'], e);
  const revocations = async () => {
    const store = new SqliteStore(stack.svc.dbPath);
    try {
      return (await store.auditLog.records(0, 100_000)).filter((r) => r.event === 'login.revoke');
    } finally {
      await store.close();
    }
  };
  /** What someone holding a copy of both keychain items can do from elsewhere: refresh with them. */
  const refreshFromElsewhere = async (refreshToken: string, jwk: JWK) => {
    const key = await importDpopKey(jwk);
    const res = await fetch(`${stack.svc.url}/v1/auth/refresh`, {
      method: 'POST', headers: { 'content-type': 'application/json', dpop: await dpopProof(key, 'POST', `${stack.svc.url}/v1/auth/refresh`) },
      body: JSON.stringify({ refresh_token: refreshToken }),
    });
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };

  before(async () => {
    stack = await startStack({ extra: { tokens: { signingKeys: 'ephemeral', accessTokenTtl: '10s' } } });
    keyring = await startKeyring();
    m = makeTestHome();
    env = { ...m.env, ...keyring.env };
    const runB = join(m.home, 'run-b');
    mkdirSync(runB, { mode: 0o700 });
    envB = { ...env, XDG_RUNTIME_DIR: runB };
  });
  after(async () => {
    await broker(['daemon', 'stop'], envB).catch(() => undefined);
    for (const o of others) await o.stop();
    await m?.stop();
    await keyring?.stop();
    await stack?.stop();
  });

  it('the device key is imported non-extractable', async () => {
    const { privateJwk } = await generateDpopKey();
    const key = await importDpopKey(privateJwk);
    await assert.rejects(crypto.subtle.exportKey('jwk', key.privateKey), /not extractable/i);
  });

  it('two daemons of one developer (two runtime directories) take turns refreshing without tripping reuse detection', async () => {
    await login('alice@example.com');
    assert.equal(stored().login.generation, 0);
    for (let turn = 0; turn < 3; turn++) {
      for (const [label, e] of [['daemon A', env], ['daemon B', envB]] as const) {
        const r = await whoami(e);
        assert.equal(r.code, 0, `turn ${turn}, ${label}: ${r.stderr}`);
        assert.equal((JSON.parse(r.stdout) as { id: string }).id, 'alice@example.com');
      }
    }
    const pids = await Promise.all([env, envB].map(async (e) => (JSON.parse((await broker(['daemon', 'status', '--json'], e)).stdout) as { pid: number }).pid));
    assert.notEqual(pids[0], pids[1], 'two daemons');
    assert.ok(stored().login.generation >= 6, `each refresh written back: generation ${stored().login.generation}`);
    assert.deepEqual(await revocations(), [], 'no reuse detected');
  });

  it('a daemon killed after a refresh starts again on the refresh token it wrote to the keychain', async () => {
    const before = stored().login.generation;
    assert.equal((await whoami()).code, 0);
    assert.equal(stored().login.generation, before + 1);
    const { pid } = JSON.parse((await broker(['daemon', 'status', '--json'], env)).stdout) as { pid: number };
    process.kill(pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    const r = await whoami();
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await revocations(), []);
  });

  it('a full copy of the keychain refreshes once from elsewhere; the next refresh of the daemon detects it and ends the login for both', async () => {
    const copy = { token: stored().refreshToken, key: deviceKey() };
    const thief = await refreshFromElsewhere(copy.token, copy.key);
    assert.equal(thief.status, 200, JSON.stringify(thief.body));
    // The developer's daemon refreshes with the same (now spent) token: reuse.
    const r = await whoami();
    assert.equal(r.code, EXIT_CODES.unauthenticated, r.stdout);
    assert.match(r.stderr, /this refresh token was already used, so its login is now revoked/);
    assert.match(r.stderr, /a copy of your login may be in use elsewhere; log in again: broker login/);
    const [revoked] = await revocations();
    assert.deepEqual([revoked?.developer, revoked?.reason, revoked?.detail?.reuseDetected], ['alice@example.com', 'reuse of a spent refresh token', true]);
    // The copy's own next token, and its access token, are worth nothing now.
    assert.equal((await refreshFromElsewhere(thief.body.refresh_token as string, copy.key)).status, 401);
    const access = await fetch(`${stack.svc.url}/v1/sessions`, { headers: { authorization: `Bearer ${String(thief.body.access_token)}` } });
    assert.equal(access.status, 401);
  });

  it('broker logout revokes the login on the service: a refresh token read before logout is refused after it', async () => {
    await login('alice@example.com');
    const copy = { token: stored().refreshToken, key: deviceKey() };
    assert.equal((await whoami()).code, 0, 'the daemon rotates the token once');
    const before = (await revocations()).length;
    const out = await broker(['logout'], env);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, `Logged out of ${stack.svc.url}\n`);
    assert.equal(keyring.read(`login:${stack.svc.url}`), null, 'the login record is gone');
    assert.equal(keyring.read(`device-key:${stack.svc.url}`), null, 'the device key is gone');
    const logout = (await revocations()).slice(before);
    assert.deepEqual(logout.map((x) => [x.decision, x.developer, x.reason]), [['revoked', 'alice@example.com', 'logout']]);
    const r = await refreshFromElsewhere(copy.token, copy.key);
    assert.equal(r.status, 401, JSON.stringify(r.body));
    assert.match(String(r.body.message), /this login was revoked \(logout\)|already used/);
  });

  it('a new broker login revokes the login it replaces', async () => {
    await login('alice@example.com');
    const first = { token: stored().refreshToken, key: deviceKey(), id: stored().login.id };
    await login('alice@example.com');
    assert.notEqual(stored().login.id, first.id);
    const r = await refreshFromElsewhere(first.token, first.key);
    assert.equal(r.status, 401, JSON.stringify(r.body));
    assert.match(String(r.body.message), /this login was revoked \(logout\)/);
    assert.equal((await whoami()).code, 0, 'the new one works');
    assert.equal((await whoami(envB)).code, 0, 'and the other daemon adopted it from the keychain');
  });

  it('broker logout without the service removes the login here, exits as upstream_unavailable and says until when it stays valid there', async () => {
    const svc = await startBrokerService({
      issuer: stack.idp.issuer, stsEndpoint: stack.proxy.url, iamEndpoint: stack.moto.url,
      extra: { aws: { region: 'us-east-1', stsEndpoint: stack.proxy.url, iamEndpoint: stack.moto.url, checkTrustAtStartup: false } },
    });
    const home = makeTestHome('broker-offline-');
    others.push(home);
    const e = { ...home.env, ...keyring.env };
    try {
      await login('carol@example.com', e, svc.url);
    } finally {
      await svc.stop();
    }
    const expiresAt = stored(svc.url).login.expiresAt;
    const r = await broker(['logout'], e);
    assert.equal(r.code, EXIT_CODES.upstream_unavailable, r.stderr);
    assert.match(r.stderr, /removed the login from this machine, but the broker service could not revoke it/);
    assert.ok(r.stderr.includes(`the login stays valid on the service until ${expiresAt} unless an admin revokes it`), r.stderr);
    assert.equal(keyring.read(`login:${svc.url}`), null);
    assert.equal(keyring.read(`device-key:${svc.url}`), null);
  });

  it('a v1 login (one item, device key inside) is refused with "log in again", and broker login replaces it whole', async () => {
    const home = makeTestHome('broker-v1-');
    others.push(home);
    const e = { ...home.env, ...keyring.env };
    mkdirSync(join(home.home, '.config', 'agent-credential-broker'), { recursive: true });
    writeFileSync(join(home.home, '.config', 'agent-credential-broker', 'config.json'), JSON.stringify({ serverUrl: stack.svc.url }));
    const { privateJwk } = await generateDpopKey();
    // What a broker before rotation wrote: refresh token and device key in one item.
    keyring.write(`login:${stack.svc.url}`, JSON.stringify({ v: 1, serverUrl: stack.svc.url, developer: 'bob@example.com', refreshToken: 'eyJ.old.token', dpopKey: privateJwk }));
    const who = await whoami(e);
    assert.equal(who.code, EXIT_CODES.not_logged_in);
    assert.match(who.stderr, /the login to .* was made by an older broker and must be renewed/);
    assert.match(who.stderr, /log in again: broker login/);
    await login('bob@example.com', e);
    const now = stored();
    assert.equal(now.v, 2);
    assert.equal(now.developer, 'bob@example.com');
    assert.notEqual(deviceKey().d, privateJwk.d, 'a new device key, in its own item');
    assert.ok(!keyring.read(`login:${stack.svc.url}`)!.includes(privateJwk.d!), 'nothing of the v1 item is left');
    const ok = await whoami(e);
    assert.equal(ok.code, 0, ok.stderr);
  });
});
