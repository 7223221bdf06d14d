/**
 * The logger's second line of defence: whatever secret-bearing object reaches a log call, at any
 * depth, in an array, inside an error or a child logger's bindings, its secrets never reach the
 * output. The broker logs no such object on purpose (it logs accessors and AccessKeyIds); this is
 * for the mistake nobody has made yet.
 */
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { createLogger } from '../broker/log.js';

const secrets: string[] = [];
/** A unique secret value, remembered for the scan. */
const secret = (what: string) => {
  const s = `${what}-SECRET-${secrets.length}-${Math.random().toString(36).slice(2, 10)}`;
  secrets.push(s);
  return s;
};
/** A value that is not a secret and must still be logged (so an empty log cannot pass the scan). */
let shownCount = 0;
const shown = (what: string) => `${what}-visible-${shownCount++}`;

/** Every secret-bearing shape the broker handles, as the code builds or receives it. */
function shapes(): Record<string, () => unknown> {
  return {
    // STS AssumeRole output (the SDK's Credentials), the broker's AwsCredentials, the credential_process document.
    stsCredentials: () => ({ Credentials: { AccessKeyId: shown('ASIA'), SecretAccessKey: secret('sts-secret-key'), SessionToken: secret('sts-session-token'), Expiration: new Date(0) } }),
    awsCredentials: () => ({ accessKeyId: shown('ASIA'), secretAccessKey: secret('aws-secret-key'), sessionToken: secret('aws-session-token'), expiration: new Date(0) }),
    processCredentials: () => ({ Version: 1, AccessKeyId: shown('ASIA'), SecretAccessKey: secret('cp-secret-key'), SessionToken: secret('cp-session-token'), Expiration: '2026-01-01T00:00:00Z' }),
    // Vault: an auth response (token create, logins), the grant handed to the daemon, the daemon's answer, login bodies.
    vaultAuthResponse: () => ({ auth: { client_token: secret('vault-client-token'), accessor: shown('accessor'), policies: ['default'], lease_duration: 60, renewable: true } }),
    vaultGrant: () => ({ token: secret('vault-grant-token'), accessor: shown('accessor'), address: 'http://127.0.0.1:8200' }),
    vaultAnswer: () => ({ template: 'db-migrate', token: secret('vault-answer-token'), accessor: shown('accessor') }),
    appRoleLogin: () => ({ role_id: shown('role-id'), secret_id: secret('approle-secret-id') }),
    jwtLogin: () => ({ role: shown('vault-role'), jwt: secret('vault-login-jwt') }),
    // OAuth/OIDC: the service's token responses, the IdP's token response, request bodies, the keychain's login record.
    brokerTokenResponse: () => ({ access_token: secret('broker-access-token'), refresh_token: secret('broker-refresh-token'), token_type: 'Bearer', developer: shown('developer') }),
    idpTokenResponse: () => ({ access_token: secret('idp-access-token'), id_token: secret('idp-id-token'), refresh_token: secret('idp-refresh-token'), scope: shown('scope'), expires_in: 300 }),
    loginRecord: () => ({ v: 2, serverUrl: shown('server'), developer: shown('developer'), refreshToken: secret('login-refresh-token'),
      login: { id: shown('login-id'), generation: 3, expiresAt: '2026-01-01T00:00:00Z' } }),
    deviceKeyItem: () => ({ kty: 'EC', crv: 'P-256', x: shown('jwk-x'), y: shown('jwk-y'), d: secret('dpop-private-d') }),
    // The service's answer to a refresh (the rotated refresh token in it).
    refreshResponse: () => ({ access_token: secret('refresh-access-token'), refresh_token: secret('rotated-refresh-token'), token_type: 'Bearer',
      developer: shown('developer'), login: { id: shown('login-id-2'), generation: 4, expiresAt: '2026-01-01T00:00:00Z' } }),
    // Private keys: the service's signing keys (EC and RSA JWKs), a PEM.
    signingKeys: () => ({ signingKeys: [{ kty: 'EC', crv: 'P-256', kid: shown('kid'), x: 'x', y: 'y', d: secret('signing-d') }] }),
    rsaPrivateJwk: () => ({ kty: 'RSA', n: shown('rsa-n'), e: 'AQAB', d: secret('rsa-d'), p: secret('rsa-p'), q: secret('rsa-q'), dp: secret('rsa-dp'), dq: secret('rsa-dq'), qi: secret('rsa-qi') }),
    pem: () => ({ kid: shown('pem-kid'), privateKey: secret('-----BEGIN PRIVATE KEY-----') }),
    // HTTP headers as fetch and the SDKs keep them: bearer tokens, Vault tokens, DPoP proofs.
    headers: () => ({ headers: { authorization: secret('Bearer'), 'x-vault-token': secret('x-vault-token'), dpop: secret('dpop-proof'), 'X-Api-Key': secret('x-api-key'), 'api-key': secret('api-key'), 'DD-API-KEY': secret('dd-api-key'), accept: shown('accept') } }),
    capitalisedHeaders: () => ({ Authorization: secret('Bearer-cap'), 'X-Vault-Token': secret('x-vault-token-cap'), 'Content-Type': shown('type') }),
    // The environment `broker exec` builds for a child.
    environment: () => ({ env: { AWS_SECRET_ACCESS_KEY: secret('env-secret-key'), AWS_SESSION_TOKEN: secret('env-session-token'), VAULT_TOKEN: secret('env-vault-token'), AWS_PROFILE: shown('profile') } }),
    password: () => ({ username: shown('user'), password: secret('password') }),
  };
}

/** An error as an HTTP client library leaves it: the request (headers, body) as enumerable properties. */
function requestError(shape: unknown): Error {
  return Object.assign(new Error('request failed'), { config: { headers: { authorization: secret('err-Bearer') } }, request: shape });
}

describe('log redaction', () => {
  const dir = mkdtempSync(join(tmpdir(), 'broker-log-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('prints no secret of any shape: top level, nested 1-3 deep, in arrays, in errors and their causes, in child bindings', () => {
    const file = join(dir, 'log.jsonl');
    const fd = openSync(file, 'a');
    const log = createLogger({ level: 'debug', destination: fd });
    let calls = 0;
    for (const [name, make] of Object.entries(shapes())) {
      const placements: Record<string, unknown> = {
        top: make(),
        nested1: { a: make() },
        nested2: { a: { b: make() } },
        nested3: { a: { b: { c: make() } } },
        array: { items: [make(), make()] },
        arrayNested: { a: [{ b: [make()] }] },
        errorProperty: { err: requestError(make()) },
        errorElsewhere: { failure: requestError(make()) },
        nestedError: { err: Object.assign(new Error('outer'), { inner: requestError(make()) }) },
        aggregate: { err: new AggregateError([requestError(make())], 'several failed') },
        causeChain: { err: new Error('outer', { cause: Object.assign(new Error('inner'), { response: make() }) }) },
      };
      for (const [where, obj] of Object.entries(placements)) {
        log.info(obj as object, `${name} ${where}`);
        calls++;
      }
      log.error(requestError(make()), `${name} error at top level`);
      log.child({ bound: make() }).info(`${name} in child bindings`);
      calls += 2;
    }
    closeSync(fd);
    const out = readFileSync(file, 'utf8');
    const lines = out.split('\n').filter(Boolean);
    assert.equal(lines.length, calls, 'one line per call');
    const byMsg = new Map(lines.map((l) => { const o = JSON.parse(l) as { msg: string }; return [o.msg, l]; }));
    const leaked = secrets.filter((s) => out.includes(s));
    assert.deepEqual(leaked, [], 'no secret value in the output');
    // What is not secret is still logged, at every depth (a cause's own properties are not: pino logs
    // a cause's message and stack only).
    for (const name of Object.keys(shapes())) {
      for (const where of ['top', 'nested3', 'arrayNested', 'errorProperty', 'aggregate']) {
        assert.match(byMsg.get(`${name} ${where}`) ?? '', /-visible-/, `${name} ${where}: its other fields are logged`);
      }
    }
    assert.ok(out.includes('[redacted]'), 'secrets are shown as [redacted]');
  });

  it('keeps errors readable (type, message with causes, stack) and survives cycles and deep objects', () => {
    const file = join(dir, 'errors.jsonl');
    const fd = openSync(file, 'a');
    const log = createLogger({ level: 'debug', destination: fd });
    const cyclic: Record<string, unknown> = { name: 'loop', token: secret('cyclic-token') };
    cyclic.self = cyclic;
    let deep: Record<string, unknown> = { token: secret('deep-token') };
    for (let i = 0; i < 50; i++) deep = { next: deep };
    log.warn({ err: new TypeError('outer', { cause: new Error('the cause') }), cyclic, deep }, 'errors');
    closeSync(fd);
    const line = JSON.parse(readFileSync(file, 'utf8')) as { err: { type: string; message: string; stack: string }; cyclic: Record<string, unknown> };
    assert.equal(line.err.type, 'TypeError');
    assert.equal(line.err.message, 'outer: the cause');
    assert.match(line.err.stack, /TypeError: outer[\s\S]*caused by: Error: the cause/);
    assert.equal(line.cyclic.name, 'loop');
    const text = JSON.stringify(line);
    assert.ok(!secrets.some((s) => text.includes(s)), 'no secret in a cyclic or deep object');
  });
});
