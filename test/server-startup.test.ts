/**
 * What an operator meets when starting `broker server`: a bad configuration stops it with the file,
 * the field and the fix; a misconfigured role trust policy is logged once per problem at start (the
 * first thing that breaks in a real set-up); and signing keys rotate by `kid` without logging anyone out.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseServerConfig } from '../broker/config/server-config.js';
import { BrokerError, EXIT_CODES } from '../broker/errors.js';
import { BrokerTokens, generateSigningJwk, loadSigningKeys } from '../broker/identity/broker-tokens.js';
import { startBrokerService, type BrokerService } from './peers/broker-service.js';
import { broker } from './peers/cli.js';
import { createRole, startMoto, type Moto } from './peers/moto.js';

const ACCT = '123456789012';
const trust = (...actions: string[]) => ({
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: actions }],
});

describe('broker server: configuration errors', () => {
  const dir = mkdtempSync(join(tmpdir(), 'broker-cfg-'));
  const write = (name: string, text: string) => { const f = join(dir, name); writeFileSync(f, text); return f; };

  it('names the file and every bad field, exits with invalid_config\'s status, and prints no stack trace', async () => {
    const file = write('bad.yaml', [
      'listen: { port: 99999 }',
      'oidc: { issuer: not-a-url, audience: broker-cli, algorithms: [none], cliClientId: broker-cli }',
      'tokens: { signingKeys: ephemeral }',
      'surprise: true',
    ].join('\n'));
    const r = await broker(['server', '--config', file], {});
    assert.equal(r.code, EXIT_CODES.invalid_config);
    assert.equal(r.stdout, '');
    for (const field of ['listen.port', 'oidc.issuer', 'oidc.algorithms.0', '(root)']) {
      assert.ok(r.stderr.includes(`${file}:${field}`), `names ${field}:\n${r.stderr}`);
    }
    assert.match(r.stderr, /surprise/);
    assert.doesNotMatch(r.stderr, /\n\s+at .*:\d+:\d+/, 'no stack trace');
  });

  it('`broker server keygen` needs no --config: a private EC P-256 JWK with a kid on stdout, the warning on stderr', async () => {
    const r = await broker(['server', 'keygen'], {});
    assert.equal(r.code, 0, r.stderr);
    const jwk = JSON.parse(r.stdout) as Record<string, string>;
    assert.equal(jwk.kty, 'EC');
    assert.equal(jwk.crv, 'P-256');
    assert.equal(jwk.alg, 'ES256');
    assert.match(jwk.d ?? '', /^[\w-]{43}$/, 'the private scalar');
    assert.match(jwk.kid ?? '', /^broker-\d{4}-\d\d-\d\d-[0-9a-f]{8}$/);
    assert.equal(r.stdout.trim().split('\n').length, 1, 'the key alone on stdout');
    assert.match(r.stderr, /^This is private key material: pipe it into your secret store; do not commit it\.\n$/);
    const named = await broker(['server', 'keygen', '--kid', 'k-2027'], {});
    assert.equal((JSON.parse(named.stdout) as { kid: string }).kid, 'k-2027');
    // The service itself still needs its configuration, and says so.
    const bare = await broker(['server'], {});
    assert.equal(bare.code, EXIT_CODES.invalid_request);
    assert.equal(bare.stdout, '');
    assert.match(bare.stderr, /^broker: broker server needs --config <file>\n {2}hint: broker server --config broker\.yaml/);
  });

  it('refuses a missing file and YAML that does not parse, clearly', async () => {
    const missing = await broker(['server', '--config', join(dir, 'nope.yaml')], {});
    assert.equal(missing.code, EXIT_CODES.invalid_config);
    assert.match(missing.stderr, /cannot read config file .*nope\.yaml: ENOENT/);
    const garbled = await broker(['server', '--config', write('garbled.yaml', 'oidc: [unclosed\n')], {});
    assert.equal(garbled.code, EXIT_CODES.invalid_config);
    assert.match(garbled.stderr, /garbled\.yaml: not valid YAML/);
  });

  it('refuses a plain-http IdP issuer unless it is on loopback and allowInsecureHttp is set', async () => {
    const oidc = (issuer: string, allowInsecureHttp?: boolean) => ({
      oidc: { issuer, audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli', ...(allowInsecureHttp === undefined ? {} : { allowInsecureHttp }) },
      tokens: { signingKeys: 'ephemeral' },
    });
    const refusal = (raw: unknown) => {
      try {
        parseServerConfig(raw, dir, 'broker.yaml');
      } catch (e) {
        assert.ok(e instanceof BrokerError && e.code === 'invalid_config', String(e));
        const d = e.details?.find((x) => x.path === 'broker.yaml:oidc.issuer');
        assert.ok(d, JSON.stringify(e.details));
        return d.message;
      }
      return assert.fail(`accepted ${JSON.stringify(raw)}`);
    };
    // Not on loopback: refused with or without the flag.
    assert.match(refusal(oidc('http://idp.example.com')), /plain http to an IdP that is not on loopback \(idp\.example\.com\).*use the IdP's https issuer URL/);
    assert.match(refusal(oidc('http://idp.example.com', true)), /allowInsecureHttp permits only a loopback IdP/);
    assert.match(refusal(oidc('http://10.0.0.5:8080', true)), /not on loopback/);
    // On loopback: only with the flag.
    assert.match(refusal(oidc('http://127.0.0.1:9000')), /is plain http; .*set oidc\.allowInsecureHttp: true/);
    assert.match(refusal(oidc('ftp://idp.example.com')), /must be an https URL/);
    // localhost is not loopback (it can resolve elsewhere; broker/limits/urls.ts): the address is asked for.
    assert.match(refusal(oidc('http://localhost:9000/realms/dev', true)), /write the loopback address instead of localhost: http:\/\/127\.0\.0\.1:9000\/realms\/dev/);
    for (const ok of [oidc('https://idp.example.com'), oidc('http://127.0.0.1:9000', true), oidc('http://127.0.0.1:9000/realms/dev', true), oidc('http://[::1]:9000', true)]) {
      assert.equal(parseServerConfig(ok, dir).oidc.issuer, ok.oidc.issuer);
    }
    // And as an operator meets it: file, field and fix, and invalid_config's exit status.
    const file = write('http-issuer.yaml', 'oidc: { issuer: "http://idp.example.com", audience: broker-cli, algorithms: [RS256], cliClientId: broker-cli, allowInsecureHttp: true }\ntokens: { signingKeys: ephemeral }\n');
    const r = await broker(['server', '--config', file], {});
    assert.equal(r.code, EXIT_CODES.invalid_config);
    assert.ok(r.stderr.includes(`${file}:oidc.issuer: plain http to an IdP that is not on loopback`), r.stderr);
  });

  it('caps token lifetimes at load (access tokens at most 1h, logins at most 7d) and checks the auth limits, naming file, field and fix', async () => {
    const base = { oidc: { issuer: 'https://idp.example.com', audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli' }, tokens: { signingKeys: 'ephemeral' } };
    const problems = (extra: Record<string, unknown>) => {
      const raw = { ...base, ...extra, tokens: { ...base.tokens, ...(extra.tokens as object | undefined) }, oidc: { ...base.oidc, ...(extra.oidc as object | undefined) } };
      try {
        parseServerConfig(raw, dir, 'broker.yaml');
      } catch (e) {
        assert.ok(e instanceof BrokerError && e.code === 'invalid_config', String(e));
        return e.details!.map((d) => `${d.path}: ${d.message}`);
      }
      return [];
    };
    assert.deepEqual(problems({ tokens: { accessTokenTtl: '2h' } }), ['broker.yaml:tokens.accessTokenTtl: is 2h; it must be between 10s and 1h (set it to 1h or less, e.g. 10m)']);
    assert.deepEqual(problems({ tokens: { refreshTokenTtl: '8d' } }), ['broker.yaml:tokens.refreshTokenTtl: is 8d; it must be between 5m and 7d (a login lasts at most 7d; set e.g. 12h)']);
    assert.deepEqual(problems({ oidc: { maxIdTokenAge: '2d' } }), ['broker.yaml:oidc.maxIdTokenAge: is 2d; it must be between 1m and 1d (an ID token is for logging in now; e.g. 10m)']);
    const auth = problems({ limits: { auth: { perAddress: { burst: 0 }, trustedProxyHops: 9, surprise: 1 } } });
    assert.deepEqual(auth.map((p) => p.slice(0, p.indexOf(': '))).sort(),
      ['broker.yaml:limits.auth', 'broker.yaml:limits.auth.perAddress.burst', 'broker.yaml:limits.auth.trustedProxyHops'], auth.join('\n'));
    assert.match(auth.join('\n'), /surprise/);
    // At the caps and the defaults: accepted.
    const ok = parseServerConfig({ ...base, tokens: { ...base.tokens, accessTokenTtl: '1h', refreshTokenTtl: '7d' } }, dir);
    assert.deepEqual([ok.tokens.accessTokenTtl, ok.tokens.refreshTokenTtl, ok.oidc.maxIdTokenAge], [3600, 7 * 86400, 600]);
    assert.deepEqual(ok.limits.auth, { perAddress: { burst: 20, perMinute: 60 }, global: { burst: 200, perMinute: 6000 }, maxAddresses: 10_000, trustedProxyHops: 0, auditWindow: 60, auditMaxKeys: 256 });
    // As an operator meets it.
    const file = write('long-tokens.yaml', 'oidc: { issuer: "https://idp.example.com", audience: broker-cli, algorithms: [RS256], cliClientId: broker-cli }\ntokens: { signingKeys: ephemeral, accessTokenTtl: 12h, refreshTokenTtl: 30d }\n');
    const r = await broker(['server', '--config', file], {});
    assert.equal(r.code, EXIT_CODES.invalid_config);
    assert.ok(r.stderr.includes(`${file}:tokens.accessTokenTtl: is 12h; it must be between 10s and 1h`), r.stderr);
    assert.ok(r.stderr.includes(`${file}:tokens.refreshTokenTtl: is 30d; it must be between 5m and 7d`), r.stderr);
  });

  it('refuses a signing key that is not a private EC P-256 JWK', async () => {
    const key = write('key.json', JSON.stringify({ kty: 'oct', k: 'c2VjcmV0', kid: 'k1' }));
    const file = write('key.yaml', [
      'oidc: { issuer: "https://idp.example.com", audience: broker-cli, algorithms: [RS256], cliClientId: broker-cli }',
      `tokens: { signingKeys: [{ file: ${JSON.stringify(key)} }] }`,
      'aws: { checkTrustAtStartup: false }',
      `store: { sqlite: ${JSON.stringify(join(dir, 'k.db'))} }`,
      `policiesDir: ${JSON.stringify(join(process.cwd(), 'policies'))}`,
    ].join('\n'));
    const r = await broker(['server', '--config', file], {});
    assert.equal(r.code, EXIT_CODES.invalid_config);
    assert.match(r.stderr, /tokens\.signingKeys\.0: a signing key must be a private EC P-256 JWK with a "kid"/);
    assert.ok(!r.stderr.includes('c2VjcmV0'), 'the key material is not echoed');
  });
});

describe('broker server: role trust check at start-up', () => {
  let moto: Moto;
  let svc: BrokerService;

  before(async () => {
    moto = await startMoto();
    // deploy-lambda: trusted correctly; read-cloudwatch-logs: no sts:TagSession; s3-artifacts: no role at all.
    await createRole(moto.url, 'broker-deploy-lambda', trust('sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'), 43200);
    await createRole(moto.url, 'broker-read-cloudwatch-logs', trust('sts:AssumeRole', 'sts:SetSourceIdentity'), 43200);
    // The IdP is never contacted by this test: the check needs only STS and IAM.
    svc = await startBrokerService({ issuer: 'http://127.0.0.1:9/unused', stsEndpoint: moto.url, iamEndpoint: moto.url });
  });
  after(async () => {
    await svc?.stop();
    await moto?.stop();
  });

  it('logs each problem once, naming the template, the role and the fix; nothing for a good role', async () => {
    const deadline = Date.now() + 15_000;
    while (!svc.log().includes('role trust check finished') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const lines = svc.log().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
    const finished = lines.find((l) => l.msg === 'role trust check finished');
    assert.ok(finished, 'the check ran');
    assert.equal(finished.withProblems, 2);
    const warnings = lines.filter((l) => l.level === 40 && typeof l.template === 'string');
    const key = (l: Record<string, unknown>) => `${String(l.template)}:${String(l.check)}`;
    assert.deepEqual(warnings.map(key).sort(), ['read-cloudwatch-logs:tag-session', 's3-artifacts:role']);
    const tag = warnings.find((l) => l.check === 'tag-session')!;
    assert.match(String(tag.msg), /sts:TagSession/);
    assert.match(String(tag.hint), /sts:TagSession/);
    assert.equal(tag.roleArn, `arn:aws:iam::${ACCT}:role/broker-read-cloudwatch-logs`);
  });

  it('keeps serving: a trust problem is a warning, not a failed start', async () => {
    const res = await fetch(`${svc.url}/healthz`);
    assert.equal(res.status, 200);
  });
});

describe('broker signing keys rotate by kid', () => {
  const issuer = 'https://broker.example.com';
  const ttl = { access: 600 };
  const principal = { id: 'alice@example.com', email: 'alice@example.com', groups: ['developers'] };
  const family = { id: 'family-1', developer: principal.id, jkt: 'thumbprint-of-the-device-key', expiresAt: Date.now() + 3600_000 };

  it('a new key signs, the old one still verifies until it is removed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-keys-'));
    const oldJwk = await generateSigningJwk('old');
    const newJwk = await generateSigningJwk('new');
    writeFileSync(join(dir, 'old.json'), JSON.stringify(oldJwk));
    writeFileSync(join(dir, 'new.json'), JSON.stringify(newJwk));

    const before = new BrokerTokens(await loadSigningKeys([{ file: 'old.json' }], dir), issuer, ttl);
    const accessBefore = await before.accessToken(principal, family.id);
    const refreshBefore = await before.refreshToken(family, 'jti-1');
    const header = (t: string) => JSON.parse(Buffer.from(t.split('.')[0]!, 'base64url').toString()) as { kid: string; alg: string };
    assert.equal(header(accessBefore).kid, 'old');

    // Rotation: the new key goes first (it signs); the old one stays to verify what it signed.
    const during = new BrokerTokens(await loadSigningKeys([{ file: 'new.json' }, { file: 'old.json' }], dir), issuer, ttl);
    assert.deepEqual(during.publicJwks().keys.map((k) => k.kid), ['new', 'old']);
    assert.ok(during.publicJwks().keys.every((k) => !('d' in k)), 'the JWKS publishes no private part');
    assert.equal((await during.verifyAccess(accessBefore)).principal.id, principal.id);
    assert.deepEqual(await during.verifyRefresh(refreshBefore), {
      developer: principal.id, familyId: family.id, jti: 'jti-1', jkt: family.jkt, expiresAt: Math.floor(family.expiresAt / 1000) * 1000,
    });
    const accessAfter = await during.accessToken(principal, family.id);
    assert.equal(header(accessAfter).kid, 'new');
    assert.equal(header(accessAfter).alg, 'ES256');

    // Once the old key is removed, what it signed no longer verifies.
    const afterRotation = new BrokerTokens(await loadSigningKeys([{ file: 'new.json' }], dir), issuer, ttl);
    assert.equal((await afterRotation.verifyAccess(accessAfter)).principal.id, principal.id);
    await assert.rejects(afterRotation.verifyAccess(accessBefore), (e: { code?: string }) => e.code === 'unauthenticated');
    await assert.rejects(afterRotation.verifyRefresh(refreshBefore), (e: { code?: string }) => e.code === 'unauthenticated');
  });

  it('refuses two keys with one kid', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-keys-'));
    writeFileSync(join(dir, 'a.json'), JSON.stringify(await generateSigningJwk('same')));
    writeFileSync(join(dir, 'b.json'), JSON.stringify(await generateSigningJwk('same')));
    await assert.rejects(loadSigningKeys([{ file: 'a.json' }, { file: 'b.json' }], dir), /duplicate kid/);
  });
});
