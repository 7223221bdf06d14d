/**
 * `broker policy check --aws`, revocation part (broker/aws/revocation-check.ts): per template role,
 * may the broker write the `broker-revoked-sessions` deny, and how was that checked. moto does not
 * implement IAM's policy simulator, so against it the check falls back to reading the policy and
 * says that writes were not verified; with moto's IAM authorization on, a broker principal without
 * iam:GetRolePolicy is reported as a failure.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CreateAccessKeyCommand, CreateUserCommand, IAMClient, PutUserPolicyCommand } from '@aws-sdk/client-iam';
import { IamRoleDenyPolicies } from '../broker/aws/role-revocations.js';
import { REPO_ROOT } from './peers/paths.js';
import type { RevocationAccessFinding } from '../broker/aws/revocation-check.js';
import { EXIT_NO } from '../broker/errors.js';
import { broker } from './peers/cli.js';
import { awsTestEnv, createRole, motoIamClient, startMoto, type Moto } from './peers/moto.js';

const TRUST = { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }] };

function templatesDir(role: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'broker-revcheck-'));
  writeFileSync(join(dir, 't.yaml'), `name: t\ndescription: x\nallowed: { groups: [developers] }\nsession: { maxDuration: 8h, credentialLifetime: 1h }\naws:\n  roleArn: arn:aws:iam::123456789012:role/${role}\n  region: us-east-1\n  policy: { Version: "2012-10-17", Statement: [{ Effect: Allow, Action: "s3:GetObject", Resource: "arn:aws:s3:::b/*" }] }\n`);
  return dir;
}

describe('broker policy check --aws: can the broker write the revocation deny', () => {
  let moto: Moto;
  before(async () => {
    moto = await startMoto();
    await createRole(moto.url, 'broker-revcheck', TRUST, 43200);
  });
  after(async () => { await moto?.stop(); });

  it('without the policy simulator (moto has none) it reads the policy, and says writes were not verified', async () => {
    const r = await broker(['policy', 'check', '--aws', '--dir', templatesDir('broker-revcheck'), '--endpoint-url', moto.url, '--json'], awsTestEnv(moto.url));
    assert.equal(r.code, 0, r.stderr);
    const { revocation } = JSON.parse(r.stdout) as { revocation: RevocationAccessFinding[] };
    assert.equal(revocation.length, 1);
    const f = revocation[0]!;
    assert.deepEqual([f.roleArn, f.templates, f.method, f.ok, f.problems], ['arn:aws:iam::123456789012:role/broker-revcheck', ['t'], 'read', true, []]);
    assert.match(f.notes.join('\n'), /policy simulator could not be used/);
    assert.match(f.notes.join('\n'), /iam:GetRolePolicy works/);
    assert.match(f.notes.join('\n'), /iam:PutRolePolicy and iam:DeleteRolePolicy not verified/);

    const text = await broker(['policy', 'check', '--aws', '--dir', templatesDir('broker-revcheck'), '--endpoint-url', moto.url], awsTestEnv(moto.url));
    assert.match(text.stdout, /revocation deny \(broker-revoked-sessions\):\npart arn:aws:iam::123456789012:role\/broker-revcheck {2}\(t; checked: read\)/);
  });
});

describe('broker policy check --aws with moto\'s IAM authorization on', () => {
  let moto: Moto;
  let keys: { id: string; secret: string };
  let revoker: { id: string; secret: string };
  before(async () => {
    // The first requests are unauthenticated (set-up); every later one needs an allowed principal.
    moto = await startMoto({ env: { INITIAL_NO_AUTH_ACTION_COUNT: '8' } });
    await createRole(moto.url, 'broker-revcheck', TRUST, 43200);
    await createRole(moto.url, 'broker-deploy-lambda', TRUST, 43200);
    const iam = motoIamClient(moto.url);
    const user = async (name: string, policy: string) => {
      await iam.send(new CreateUserCommand({ UserName: name }));
      const k = (await iam.send(new CreateAccessKeyCommand({ UserName: name }))).AccessKey!;
      await iam.send(new PutUserPolicyCommand({ UserName: name, PolicyName: 'p', PolicyDocument: policy }));
      return { id: k.AccessKeyId!, secret: k.SecretAccessKey! };
    };
    try {
      keys = await user('broker-no-revoke', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: ['sts:GetCallerIdentity', 'iam:GetRole'], Resource: '*' }] }));
      // Exactly the least-privilege policy the project ships.
      revoker = await user('broker-revoker', readFileSync(join(REPO_ROOT, 'deploy/iam/broker-revocation-policy.json'), 'utf8'));
    } finally {
      iam.destroy();
    }
  });

  it('deploy/iam/broker-revocation-policy.json is enough to write, read and delete the deny on a listed role, and nothing on another', async () => {
    const iam = new IAMClient({ region: 'us-east-1', endpoint: moto.url, credentials: { accessKeyId: revoker.id, secretAccessKey: revoker.secret } });
    try {
      const p = new IamRoleDenyPolicies(iam);
      const listed = 'arn:aws:iam::123456789012:role/broker-deploy-lambda';
      assert.equal((await p.apply(listed, { sessionIds: ['aaaaaaaaaa'], sourceIdentities: [] })).outcome, 'written');
      assert.deepEqual(await p.read(listed), { Version: '2012-10-17', Statement: [{
        Sid: 'BrokerRevokedSessions', Effect: 'Deny', Action: '*', Resource: '*', Condition: { StringEquals: { 'aws:PrincipalTag/broker:session': ['aaaaaaaaaa'] } },
      }] });
      assert.equal((await p.apply(listed, { sessionIds: [], sourceIdentities: [] })).outcome, 'deleted');
      assert.equal(await p.read(listed), null);
      await assert.rejects(p.apply('arn:aws:iam::123456789012:role/broker-revcheck', { sessionIds: ['aaaaaaaaaa'], sourceIdentities: [] }),
        (e: Error & { code?: string; hint?: string }) => e.code === 'upstream_error' && /AccessDenied/.test(e.message) && /deploy\/iam\/broker-revocation-policy.json/.test(e.hint ?? ''));
    } finally {
      iam.destroy();
    }
  });
  after(async () => { await moto?.stop(); });

  it('a broker principal that may not read the role\'s policy fails the check (exit 1) with the permissions to add', async () => {
    const env = { ...awsTestEnv(moto.url), AWS_ACCESS_KEY_ID: keys.id, AWS_SECRET_ACCESS_KEY: keys.secret };
    const r = await broker(['policy', 'check', '--aws', '--dir', templatesDir('broker-revcheck'), '--endpoint-url', moto.url, '--json'], env);
    assert.equal(r.code, EXIT_NO, r.stderr);
    const { revocation } = JSON.parse(r.stdout) as { revocation: RevocationAccessFinding[] };
    assert.deepEqual(revocation.map((f) => [f.ok, f.method, f.problems.map((p) => p.action)]), [[false, 'read', ['iam:GetRolePolicy']]]);
    assert.match(revocation[0]!.problems[0]!.hint, /iam:GetRolePolicy, iam:PutRolePolicy, iam:DeleteRolePolicy on arn:aws:iam::123456789012:role\/broker-revcheck[\s\S]*deploy\/iam\/broker-revocation-policy.json/);
  });
});
