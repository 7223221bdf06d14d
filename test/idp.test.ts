/**
 * The CLI's device-flow login (broker/client/device-login.ts) against the real oidc-provider, whose
 * device pages the test IdP drives over HTTP; and readIdTokenFile for `broker login --id-token-file`.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { deviceLogin, readIdTokenFile, type DeviceLoginOptions, type DevicePrompt } from '../broker/client/device-login.js';
import { BrokerError, type ErrorCode } from '../broker/errors.js';
import { CLI_CLIENT_ID, LOGIN_SCOPE, startIdp, type TestIdp } from './peers/idp.js';
import { forgeIdToken, unsignedIdToken } from './peers/tokens.js';

/** Verifies an ID token the way a relying party must: the IdP's keys from discovery → jwks_uri. */
async function verifyWithIdpKeys(idp: TestIdp, token: string, algorithms: string[]) {
  const doc = (await (await fetch(`${idp.issuer}/.well-known/openid-configuration`)).json()) as { issuer: string; jwks_uri: string };
  assert.equal(doc.issuer, idp.issuer);
  return jwtVerify(token, createRemoteJWKSet(new URL(doc.jwks_uri)), { issuer: idp.issuer, audience: CLI_CLIENT_ID, algorithms });
}

function isBrokerError(code: ErrorCode, message: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof BrokerError, `expected a BrokerError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, message);
    return true;
  };
}

/** deviceLogin that answers the prompt with `onCode` (approve, deny, or nothing). */
function login(idp: TestIdp, onCode: (userCode: string) => Promise<void> | void, extra: Partial<DeviceLoginOptions> = {}) {
  const prompts: DevicePrompt[] = [];
  let answered: Promise<void> | void = undefined;
  const result = deviceLogin({
    issuer: idp.issuer, clientId: CLI_CLIENT_ID, scope: LOGIN_SCOPE, allowInsecureHttp: true,
    onPrompt: (p) => { prompts.push(p); answered = onCode(p.userCode); },
    ...extra,
  }).finally(async () => { await answered; });
  return { result, prompts };
}

describe('device flow login against oidc-provider', () => {
  let idp: TestIdp;
  let es256Idp: TestIdp;
  let shortIdp: TestIdp;
  before(async () => {
    idp = await startIdp();
    es256Idp = await startIdp({ idTokenAlg: 'ES256' });
    shortIdp = await startIdp({ deviceCodeTtlSeconds: 2 });
  });
  after(async () => {
    await idp?.stop();
    await es256Idp?.stop();
    await shortIdp?.stop();
  });

  it('returns an ID token for the approving user that verifies against the IdP\'s JWKS', async () => {
    const { result, prompts } = login(idp, (code) => idp.approveDevice(code, 'carol@example.com'));
    const { idToken } = await result;
    assert.equal(prompts.length, 1);
    const p = prompts[0]!;
    assert.equal(p.verificationUri, `${idp.issuer}/device`);
    assert.equal(p.verificationUriComplete, `${idp.issuer}/device?user_code=${p.userCode}`);
    assert.match(p.userCode, /^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$/);
    assert.equal(p.expiresIn, 600);

    const { payload, protectedHeader } = await verifyWithIdpKeys(idp, idToken, ['RS256']);
    assert.equal(protectedHeader.alg, 'RS256');
    assert.equal(payload.iss, idp.issuer);
    assert.equal(payload.aud, 'broker-cli');
    assert.equal(payload.email, 'carol@example.com');
    assert.equal(payload.email_verified, true);
    assert.deepEqual(payload.groups, ['developers', 'admins']);
  });

  it('signs with ES256 when the client is registered for it', async () => {
    const { result } = login(es256Idp, (code) => es256Idp.approveDevice(code, 'alice@example.com'));
    const { idToken } = await result;
    assert.equal(decodeProtectedHeader(idToken).alg, 'ES256');
    const { payload } = await verifyWithIdpKeys(es256Idp, idToken, ['ES256']);
    assert.equal(payload.email, 'alice@example.com');
    assert.deepEqual(payload.groups, ['developers']);
    await assert.rejects(verifyWithIdpKeys(es256Idp, idToken, ['RS256']), 'the verifier\'s allowlist, not the token, picks the algorithm');
  });

  it('a denied request fails with forbidden', async () => {
    const { result } = login(idp, (code) => idp.denyDevice(code));
    await assert.rejects(result, isBrokerError('forbidden', /denied at the identity provider/));
  });

  it('a user code nobody approves expires: unauthenticated, after the IdP says expired_token', async () => {
    const started = Date.now();
    const { result, prompts } = login(shortIdp, () => {});
    await assert.rejects(result, isBrokerError('unauthenticated', /expired before it was approved/));
    assert.equal(prompts[0]!.expiresIn, 2);
    // The IdP's answer ends it (about 2–3 s), not our backstop timer (expires_in + 5 s).
    assert.ok(Date.now() - started < 6_000, `took ${Date.now() - started} ms`);
  });

  it('approving as an unknown user does not complete the login', async () => {
    const ac = new AbortController();
    let refused: unknown;
    const { result } = login(idp, async (code) => {
      refused = await idp.approveDevice(code, 'mallory@example.com').then(() => undefined, (e: unknown) => e);
      ac.abort();
    }, { signal: ac.signal });
    await assert.rejects(result, isBrokerError('unauthenticated', /cancelled/));
    assert.match(String(refused), /login as mallory@example\.com refused: wrong email or password/);
  });

  it('a scope without openid yields no ID token: upstream_error', async () => {
    const { result } = login(idp, (code) => idp.approveDevice(code, 'alice@example.com'), { scope: 'email groups' });
    await assert.rejects(result, (e: unknown) => {
      isBrokerError('upstream_error', /returned no ID token/)(e);
      assert.match((e as BrokerError).hint!, /must include "openid"/);
      return true;
    });
  });

  it('an unknown client is refused by the IdP: upstream_error naming the IdP\'s error', async () => {
    const { result } = login(idp, () => {}, { clientId: 'no-such-client' });
    await assert.rejects(result, isBrokerError('upstream_error', /refused the device authorization request: invalid_client/));
  });

  it('an unreachable IdP: upstream_unavailable', async () => {
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    await new Promise<void>((r) => server.close(() => r()));
    await assert.rejects(
      deviceLogin({ issuer: `http://127.0.0.1:${port}`, clientId: CLI_CLIENT_ID, scope: LOGIN_SCOPE, allowInsecureHttp: true, onPrompt: () => assert.fail('no prompt') }),
      isBrokerError('upstream_unavailable', new RegExp(`cannot reach the identity provider at http://127\\.0\\.0\\.1:${port}`)),
    );
  });

  it('plain http only with allowInsecureHttp, and only on loopback', async () => {
    const onPrompt = () => assert.fail('no prompt');
    await assert.rejects(deviceLogin({ issuer: idp.issuer, clientId: CLI_CLIENT_ID, scope: LOGIN_SCOPE, onPrompt }),
      isBrokerError('invalid_config', /is not an https URL/));
    await assert.rejects(deviceLogin({ issuer: 'http://idp.example.com', clientId: CLI_CLIENT_ID, scope: LOGIN_SCOPE, allowInsecureHttp: true, onPrompt }),
      (e: unknown) => isBrokerError('invalid_config', /is not an https URL/)(e) && /loopback/.test((e as BrokerError).hint!));
    await assert.rejects(deviceLogin({ issuer: 'not a url', clientId: CLI_CLIENT_ID, scope: LOGIN_SCOPE, onPrompt }),
      isBrokerError('invalid_config', /is not a URL/));
  });

  it('loginAs gives a genuine token for each user, with that user\'s groups', async () => {
    const bob = await idp.loginAs('bob@example.com');
    const { payload } = await verifyWithIdpKeys(idp, bob, ['RS256']);
    assert.equal(payload.email, 'bob@example.com');
    assert.deepEqual(payload.groups, ['contractors']);
  });

  it('the hostile-token helpers make tokens the IdP\'s keys reject', async () => {
    const spec = { issuer: idp.issuer, audience: CLI_CLIENT_ID, email: 'alice@example.com', groups: ['admins'] };
    await assert.rejects(verifyWithIdpKeys(idp, await forgeIdToken(spec), ['RS256']));
    await assert.rejects(verifyWithIdpKeys(idp, unsignedIdToken(spec), ['RS256']));
    await assert.rejects(verifyWithIdpKeys(idp, await idp.issueIdToken('alice@example.com', { audience: 'another-client' }), ['RS256']), /aud/);
    await assert.rejects(verifyWithIdpKeys(idp, await idp.issueIdToken('alice@example.com', { expSecondsFromNow: -60 }), ['RS256']), /exp/);
    // …while the same helper with no flaw yields a token that verifies (so the rejections above are about the flaw).
    await verifyWithIdpKeys(idp, await idp.issueIdToken('alice@example.com'), ['RS256']);
  });
});

describe('readIdTokenFile', () => {
  const dir = mkdtempSync(join(tmpdir(), 'broker-idtoken-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, content: string) => { const p = join(dir, name); writeFileSync(p, content); return p; };
  let token: string;
  before(async () => {
    token = await forgeIdToken({ issuer: 'https://idp.example.com', audience: CLI_CLIENT_ID, email: 'alice@example.com' });
  });

  it('reads a file and trims surrounding whitespace', async () => {
    assert.equal(await readIdTokenFile(file('ok.jwt', `\n  ${token}\r\n`)), token);
  });

  it('reads stdin for -', async () => {
    const stdin = Readable.from([Buffer.from(token.slice(0, 10)), Buffer.from(`${token.slice(10)}\n`)]);
    assert.equal(await readIdTokenFile('-', stdin), token);
  });

  it('refuses a terminal on stdin (the token would echo)', async () => {
    const tty = Object.assign(Readable.from([]), { isTTY: true });
    await assert.rejects(readIdTokenFile('-', tty), isBrokerError('invalid_request', /stdin, which is a terminal/));
  });

  it('rejects an empty file or empty stdin', async () => {
    await assert.rejects(readIdTokenFile(file('empty.jwt', ' \n\t\n')), isBrokerError('invalid_request', /empty\.jwt is empty/));
    await assert.rejects(readIdTokenFile('-', Readable.from([])), isBrokerError('invalid_request', /stdin is empty/));
  });

  it('rejects content that is not a compact JWS, without echoing it', async () => {
    const samples = {
      text: 'correct horse battery staple',
      jwe: `${token}.extra.parts`,
      json: JSON.stringify({ id_token: 'nope-secret-ish' }),
      twoTokens: `${token}\n${token}`,
      badHeader: `${Buffer.from('not json').toString('base64url')}.${token.split('.')[1]}.${token.split('.')[2]}`,
    };
    for (const [name, content] of Object.entries(samples)) {
      await assert.rejects(readIdTokenFile(file(`${name}.txt`, content)), (e: unknown) => {
        isBrokerError('invalid_request', /does not hold a JWT/)(e);
        const shown = JSON.stringify((e as BrokerError).toJSON());
        for (const piece of [content, token, 'horse', 'nope-secret-ish']) assert.ok(!shown.includes(piece), `${name}: error must not echo the content`);
        return true;
      });
    }
  });

  it('rejects a missing path, a directory and an oversized file clearly', async () => {
    await assert.rejects(readIdTokenFile(join(dir, 'missing.jwt')), isBrokerError('invalid_request', /cannot read --id-token-file .*missing\.jwt \(ENOENT\)/));
    await assert.rejects(readIdTokenFile(dir), isBrokerError('invalid_request', /is not a file/));
    await assert.rejects(readIdTokenFile(file('huge.jwt', `${token}${'A'.repeat(30_000)}`)), isBrokerError('invalid_request', /larger than an ID token can be/));
  });
});
