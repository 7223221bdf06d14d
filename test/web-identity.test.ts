/**
 * A broker without AWS keys (README, "A broker without AWS keys"): with `aws.via: web-identity` the
 * service signs a JWT per issuance and calls STS AssumeRoleWithWebIdentity, unsigned. moto does not
 * verify the JWT, so this test does: against the JWKS the running service publishes at its discovery
 * document's jwks_uri, claim by claim.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createLocalJWKSet, createRemoteJWKSet, decodeProtectedHeader, jwtVerify, type JWK } from 'jose';
import { stringify } from 'yaml';
import { parseServerConfig } from '../broker/config/server-config.js';
import { generateSigningJwk } from '../broker/identity/broker-tokens.js';
import { CreateOpenIDConnectProviderCommand } from '@aws-sdk/client-iam';
import { evaluateFederatedTrust, oidcProviderFor, type TrustFinding } from '../broker/aws/trust-check.js';
import { EXIT_CODES, EXIT_NO, isBrokerError } from '../broker/errors.js';
import { loadTemplates, loadTemplatesOrThrow } from '../broker/templates/load.js';
import { buildAssumeRoleRequest } from '../broker/templates/render.js';
import { apiCaller, startBrokerService, type BrokerService } from './peers/broker-service.js';
import { broker, run } from './peers/cli.js';
import { startIdp, type TestIdp } from './peers/idp.js';
import { awsTestEnv, createRole, motoIamClient, startMoto, type Moto } from './peers/moto.js';
import { POLICIES_DIR, VENV_BIN } from './peers/paths.js';
import { startRecordingProxy, type RecordedRequest } from './peers/recording-proxy.js';

const ACCOUNT = '123456789012';
const ROLE = 'broker-read-cloudwatch-logs';

/** The trust deploy/iam/web-identity-trust-policy.json describes, for an issuer on loopback. */
export function webIdentityTrust(issuerHostPath: string, template: string): object {
  return {
    Version: '2012-10-17',
    Statement: [{
      Effect: 'Allow',
      Principal: { Federated: `arn:aws:iam::${ACCOUNT}:oidc-provider/${issuerHostPath}` },
      Action: ['sts:AssumeRoleWithWebIdentity', 'sts:TagSession', 'sts:SetSourceIdentity'],
      Condition: {
        StringEquals: { [`${issuerHostPath}:aud`]: 'sts.amazonaws.com' },
        StringLike: { [`${issuerHostPath}:sub`]: `task/${template}/*` },
      },
    }],
  };
}

describe('a broker without AWS keys: AssumeRoleWithWebIdentity with its own token', () => {
  let moto: Moto;
  let proxy: Awaited<ReturnType<typeof startRecordingProxy>>;
  let idp: TestIdp;
  let svc: BrokerService;
  let started: { status: number; body: any };
  let call: RecordedRequest;

  before(async () => {
    moto = await startMoto();
    proxy = await startRecordingProxy(moto.url);
    idp = await startIdp();
    await createRole(moto.url, ROLE, webIdentityTrust('127.0.0.1', 'read-cloudwatch-logs'), 43200);
    svc = await startBrokerService({
      issuer: idp.issuer, stsEndpoint: proxy.url, iamEndpoint: moto.url, withoutAwsKeys: true,
      extra: { aws: { region: 'us-east-1', stsEndpoint: proxy.url, iamEndpoint: moto.url, via: 'web-identity', webIdentity: { signingKeys: 'ephemeral' } } },
    });
    const api = apiCaller(svc, idp);
    started = await api('POST', '/v1/sessions', 'alice@example.com', { template: 'read-cloudwatch-logs', params: { logGroup: '/aws/lambda/checkout-api' }, agent: 'claude-code' });
    const calls = proxy.requests.filter((r) => r.action === 'AssumeRoleWithWebIdentity');
    assert.equal(calls.length, 1, `one AssumeRoleWithWebIdentity: ${JSON.stringify(proxy.requests.map((r) => r.action))}`);
    call = calls[0]!;
  });
  after(async () => {
    await svc?.stop();
    await idp?.stop();
    await proxy?.stop();
    await moto?.stop();
  });

  it('issues credentials through AssumeRoleWithWebIdentity, unsigned, with the parameters AssumeRole would get', () => {
    assert.equal(started.status, 201, JSON.stringify(started.body));
    assert.ok(started.body.credentials.AccessKeyId);
    assert.equal(proxy.requests.filter((r) => r.action === 'AssumeRole').length, 0, 'no AssumeRole');
    // Unsigned: no SigV4 Authorization header, no security token; the service had no AWS keys at all.
    assert.equal(call.headers.authorization, undefined);
    assert.equal(call.headers['x-amz-security-token'], undefined);
    const t = loadTemplatesOrThrow(POLICIES_DIR).get('read-cloudwatch-logs');
    const expected = buildAssumeRoleRequest(t!, { developer: 'alice@example.com', sessionId: started.body.session.id, agent: 'claude-code', params: { logGroup: '/aws/lambda/checkout-api' } }, 3600);
    assert.equal(call.params.RoleArn, `arn:aws:iam::${ACCOUNT}:role/${ROLE}`);
    assert.equal(call.params.RoleSessionName, expected.RoleSessionName);
    assert.equal(call.params.Policy, expected.Policy);
    const duration = Number(call.params.DurationSeconds);
    assert.ok(duration >= 900 && duration <= 3600, `DurationSeconds ${duration}`);
    // Tags and SourceIdentity are not parameters of this call: they travel in the token.
    assert.equal(Object.keys(call.params).filter((k) => /^(Tags|TransitiveTagKeys|SourceIdentity)/.test(k)).length, 0);
    assert.ok(call.params.WebIdentityToken);
    assert.ok(call.params.WebIdentityToken.length <= 20_000, 'STS takes tokens of at most 20,000 chars');
  });

  it("the recorded token verifies against the service's web-identity JWKS, fetched through its discovery document, with every claim as AWS reads it", async () => {
    const discovery = await (await fetch(`${svc.url}/.well-known/openid-configuration`)).json() as Record<string, any>;
    const token = call.params.WebIdentityToken!;
    const { payload, protectedHeader } = await jwtVerify(token, createRemoteJWKSet(new URL(discovery.jwks_uri)), {
      issuer: svc.url, audience: 'sts.amazonaws.com', algorithms: ['ES256'],
    });
    assert.equal(protectedHeader.alg, 'ES256');
    assert.ok(protectedHeader.kid);
    const t = loadTemplatesOrThrow(POLICIES_DIR).get('read-cloudwatch-logs');
    const expected = buildAssumeRoleRequest(t!, { developer: 'alice@example.com', sessionId: started.body.session.id, agent: 'claude-code', params: { logGroup: '/aws/lambda/checkout-api' } }, 3600);
    assert.deepEqual(Object.keys(payload).sort(), ['aud', 'exp', 'https://aws.amazon.com/source_identity', 'https://aws.amazon.com/tags', 'iat', 'iss', 'jti', 'nbf', 'sub'].sort());
    assert.equal(payload.iss, svc.url);
    assert.equal(payload.aud, 'sts.amazonaws.com');
    assert.equal(payload.sub, `task/read-cloudwatch-logs/${started.body.session.id}`);
    assert.ok(payload.exp! - payload.iat! <= 300, `lives ${payload.exp! - payload.iat!} s`);
    assert.ok(Math.abs(payload.iat! - Date.now() / 1000) < 120);
    assert.equal(payload.nbf, payload.iat);
    assert.match(String(payload.jti), /^[0-9a-f-]{36}$/);
    assert.equal(payload['https://aws.amazon.com/source_identity'], 'alice@example.com');
    assert.deepEqual(payload['https://aws.amazon.com/tags'], {
      principal_tags: Object.fromEntries(expected.Tags.map((x) => [x.Key, [x.Value]])),
      transitive_tag_keys: expected.TransitiveTagKeys,
    });
    // The four broker tags, with this session's values.
    const tags = (payload['https://aws.amazon.com/tags'] as { principal_tags: Record<string, string[]> }).principal_tags;
    assert.deepEqual(tags['broker:developer'], ['alice@example.com']);
    assert.deepEqual(tags['broker:task'], ['read-cloudwatch-logs']);
    assert.deepEqual(tags['broker:session'], [started.body.session.id]);
    assert.deepEqual(tags['broker:agent'], ['claude-code']);
  });

  it('the credentials work: the AWS CLI is the assumed role session', async () => {
    const c = started.body.credentials;
    const r = await run(join(VENV_BIN, 'aws'), ['sts', 'get-caller-identity', '--output', 'json'], {
      env: { ...process.env, ...awsTestEnv(moto.url), AWS_ACCESS_KEY_ID: c.AccessKeyId, AWS_SECRET_ACCESS_KEY: c.SecretAccessKey, AWS_SESSION_TOKEN: c.SessionToken },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).Arn, `arn:aws:sts::${ACCOUNT}:assumed-role/${ROLE}/${call.params.RoleSessionName}`);
  });

  it("the web-identity keys are not the broker's token keys, and a token of one never verifies with the other", async () => {
    const tokenJwks = await (await fetch(`${svc.url}/.well-known/jwks.json`)).json() as { keys: JWK[] };
    const webJwks = await (await fetch(`${svc.url}/.well-known/web-identity-jwks.json`)).json() as { keys: JWK[] };
    assert.ok(tokenJwks.keys.length >= 1 && webJwks.keys.length >= 1);
    for (const w of webJwks.keys) {
      assert.equal(w.d, undefined, 'public keys only');
      assert.ok(!tokenJwks.keys.some((k) => k.kid === w.kid || k.x === w.x), `web-identity key ${w.kid} is also a token key`);
    }
    await assert.rejects(jwtVerify(call.params.WebIdentityToken!, createLocalJWKSet(tokenJwks), { algorithms: ['ES256'] }));
    assert.ok(webJwks.keys.some((k) => k.kid === decodeProtectedHeader(call.params.WebIdentityToken!).kid));
  });

  it('serves a valid OpenID Connect discovery document at the issuer URL', async () => {
    const res = await fetch(`${svc.url}/.well-known/openid-configuration`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    const d = await res.json() as Record<string, any>;
    // OpenID Connect Discovery 1.0 §3 and §4.3: issuer identical to the URL it was fetched under (and the tokens' iss).
    assert.equal(d.issuer, svc.url);
    assert.equal(d.jwks_uri, `${svc.url}/.well-known/web-identity-jwks.json`);
    assert.deepEqual(d.id_token_signing_alg_values_supported, ['ES256']);
    assert.deepEqual(d.response_types_supported, ['id_token']);
    assert.deepEqual(d.subject_types_supported, ['public']);
    assert.ok(d.claims_supported.includes('https://aws.amazon.com/tags'));
  });

  it('nothing secret reaches the service log: not the token, not the credentials', () => {
    const log = svc.log();
    assert.ok(!log.includes(call.params.WebIdentityToken!), 'the web-identity token is in the log');
    assert.ok(!log.includes(started.body.credentials.SecretAccessKey));
    assert.ok(!log.includes(started.body.credentials.SessionToken));
  });
});

describe('aws.via at load', () => {
  it('a template with a bad aws.via is refused, naming the field', () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-via-'));
    writeFileSync(join(dir, 'bad-via.yaml'), stringify({
      name: 'bad-via', description: 'x', allowed: { groups: ['developers'] }, session: { maxDuration: '1h' },
      aws: { roleArn: `arn:aws:iam::${ACCOUNT}:role/x`, region: 'us-east-1', via: 'web-ident', policy: { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 's3:GetObject', Resource: 'arn:aws:s3:::b/*' }] } },
    }));
    const { problems } = loadTemplates(dir);
    assert.deepEqual(problems.map((p) => [p.path, p.message]), [['aws.via', 'must be assume-role or web-identity']]);
  });

  it('a service whose aws.via is web-identity without aws.webIdentity is refused, naming the field', () => {
    const base = { oidc: { issuer: 'https://idp.example.com', audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli' }, tokens: { signingKeys: 'ephemeral' } };
    assert.throws(() => parseServerConfig({ ...base, aws: { via: 'web-identity' } }, '/tmp'), (e) => {
      assert.ok(isBrokerError(e) && e.code === 'invalid_config');
      assert.deepEqual(e.details?.map((d) => d.path), ['config:aws.webIdentity']);
      return true;
    });
    assert.throws(() => parseServerConfig({ ...base, aws: { via: 'web' } }, '/tmp'), (e) => isBrokerError(e) && e.details?.[0]?.path === 'config:aws.via');
    assert.equal(parseServerConfig({ ...base, aws: { via: 'web-identity', webIdentity: { signingKeys: 'ephemeral' } } }, '/tmp').aws.via, 'web-identity');
    assert.equal(parseServerConfig(base, '/tmp').aws.via, 'assume-role');
  });
});

describe('aws.webIdentity keys at start', () => {
  it('a web-identity key that is also a token key stops the start, naming the field', async () => {
    const idp = await startIdp();
    try {
      const key = JSON.stringify(await generateSigningJwk('shared-1'));
      await assert.rejects(startBrokerService({
        issuer: idp.issuer, stsEndpoint: 'http://127.0.0.1:9', iamEndpoint: 'http://127.0.0.1:9', withoutAwsKeys: true,
        env: { TOKEN_KEY: key, WEB_KEY: key },
        extra: {
          tokens: { signingKeys: [{ env: 'TOKEN_KEY' }] },
          aws: { region: 'us-east-1', via: 'web-identity', checkTrustAtStartup: false, webIdentity: { signingKeys: [{ env: 'WEB_KEY' }] } },
        },
      }), /aws\.webIdentity\.signingKeys: key shared-1 is also one of tokens\.signingKeys/);
    } finally {
      await idp.stop();
    }
  });
});

describe('broker policy check --aws for web-identity roles', () => {
  const ISSUER = 'https://broker.example.com';
  const ID = 'broker.example.com';
  let moto: Moto;
  let dir: string;
  const env = () => ({ ...awsTestEnv(moto.url), HOME: dir });
  const template = (name: string, role: string, via?: string) => stringify({
    name, description: 'x', allowed: { groups: ['developers'] }, session: { maxDuration: '8h', credentialLifetime: '1h' },
    aws: { roleArn: `arn:aws:iam::${ACCOUNT}:role/${role}`, region: 'us-east-1', ...(via ? { via } : {}), policy: { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 's3:GetObject', Resource: 'arn:aws:s3:::b/*' }] } },
  });

  before(async () => {
    moto = await startMoto();
    const iam = motoIamClient(moto.url);
    await iam.send(new CreateOpenIDConnectProviderCommand({ Url: ISSUER, ClientIDList: ['sts.amazonaws.com'], ThumbprintList: ['0'.repeat(40)] }));
    iam.destroy();
    await createRole(moto.url, 'web-good', webIdentityTrust(ID, 'w-good'), 3600);
    // No aud condition, no sts:SetSourceIdentity, and a subject that is another template's.
    await createRole(moto.url, 'web-bad', {
      Version: '2012-10-17',
      Statement: [{
        Effect: 'Allow', Principal: { Federated: `arn:aws:iam::${ACCOUNT}:oidc-provider/${ID}` }, Action: ['sts:AssumeRoleWithWebIdentity', 'sts:TagSession'],
        Condition: { StringLike: { [`${ID}:sub`]: 'task/w-other/*' } },
      }],
    }, 3600);
    dir = mkdtempSync(join(tmpdir(), 'broker-webtrust-'));
    writeFileSync(join(dir, 'w-good.yaml'), template('w-good', 'web-good', 'web-identity'));
    writeFileSync(join(dir, 'w-bad.yaml'), template('w-bad', 'web-bad'));
  });
  after(async () => { await moto?.stop(); });

  it('the provider ARN and condition-key prefix come from the issuer URL', () => {
    assert.deepEqual(oidcProviderFor('https://broker.example.com/tenant-a', ACCOUNT), { id: 'broker.example.com/tenant-a', arn: `arn:aws:iam::${ACCOUNT}:oidc-provider/broker.example.com/tenant-a` });
    const doc = webIdentityTrust(ID, 'w-good');
    assert.equal(evaluateFederatedTrust(doc, `arn:aws:iam::${ACCOUNT}:oidc-provider/${ID}`, 'sts:AssumeRoleWithWebIdentity').decision, 'allowed');
    assert.equal(evaluateFederatedTrust(doc, `arn:aws:iam::${ACCOUNT}:oidc-provider/other.example.com`, 'sts:AssumeRoleWithWebIdentity').decision, 'not-allowed');
    assert.equal(evaluateFederatedTrust(doc, `arn:aws:iam::${ACCOUNT}:oidc-provider/${ID}`, 'sts:AssumeRole').decision, 'not-allowed');
  });

  it('reports a good and a bad web-identity trust (the bad one by check), and exits 1', async () => {
    const r = await broker(['policy', 'check', '--aws', '--dir', dir, '--endpoint-url', moto.url, '--issuer', ISSUER, '--via', 'web-identity', '--json'], env());
    assert.equal(r.code, EXIT_NO, r.stderr);
    const out = JSON.parse(r.stdout) as { findings: TrustFinding[] };
    assert.deepEqual(out.findings.map((f) => [f.template, f.ok, f.problems.map((p) => p.check).sort()]).sort(), [
      ['w-bad', false, ['audience', 'set-source-identity', 'subject']],
      ['w-good', true, []],
    ]);
    const bad = out.findings.find((f) => f.template === 'w-bad')!;
    assert.match(bad.problems.find((p) => p.check === 'set-source-identity')!.hint, /"Federated":"arn:aws:iam::123456789012:oidc-provider\/broker\.example\.com"/);
    const text = await broker(['policy', 'check', '--aws', '--dir', dir, '--endpoint-url', moto.url, '--issuer', ISSUER, '--via', 'web-identity'], env());
    assert.match(text.stdout, /ok {3}w-good/);
    assert.match(text.stdout, /FAIL w-bad[\s\S]*\[audience\][\s\S]*broker\.example\.com:aud/);
  });

  it('an issuer with no IAM OIDC provider is a problem, with the command that creates it', async () => {
    const r = await broker(['policy', 'check', '--aws', '--dir', dir, '--endpoint-url', moto.url, '--issuer', 'https://other.example.com', '--via', 'web-identity', '--json'], env());
    assert.equal(r.code, EXIT_NO, r.stderr);
    const out = JSON.parse(r.stdout) as { findings: TrustFinding[] };
    const good = out.findings.find((f) => f.template === 'w-good')!;
    assert.ok(good.problems.some((p) => p.check === 'oidc-provider' && /create-open-id-connect-provider --url https:\/\/other\.example\.com --client-id-list sts\.amazonaws\.com/.test(p.hint)));
  });

  it('broker policy explain names the call a web-identity template makes', async () => {
    const r = await broker(['policy', 'explain', 'w-good', '--as', 'alice@example.com', '--dir', dir], env());
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /AssumeRoleWithWebIdentity request \(aws\.via web-identity; not sent/);
    const json = await broker(['policy', 'explain', 'w-good', '--as', 'alice@example.com', '--dir', dir, '--json'], env());
    assert.equal(JSON.parse(json.stdout).via, 'web-identity');
    const other = await broker(['policy', 'explain', 'w-bad', '--as', 'alice@example.com', '--dir', dir, '--json'], env());
    assert.equal(JSON.parse(other.stdout).via, undefined, "a template without aws.via takes the service's, which explain cannot know");
  });

  it('web-identity templates without --issuer: a clear refusal', async () => {
    const r = await broker(['policy', 'check', '--aws', '--dir', dir, '--endpoint-url', moto.url], env());
    assert.equal(r.code, EXIT_CODES.invalid_request);
    assert.match(r.stderr, /aws\.via web-identity \(w-good\): give --issuer/);
  });
});
