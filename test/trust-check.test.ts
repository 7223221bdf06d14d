import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GetRoleCommand, IAMClient, UpdateAssumeRolePolicyCommand } from '@aws-sdk/client-iam';
import { runSimulation } from '@cloud-copilot/iam-simulate';
import { makeIamClient, makeStsClient } from '../broker/aws/clients.js';
import { EXIT_CODES, EXIT_NO } from '../broker/errors.js';
import { checkRoleTrust, evaluateTrustPolicy, resolveBrokerPrincipal, trustPrincipalFor, type TrustFinding } from '../broker/aws/trust-check.js';
import { broker, run } from './peers/cli.js';
import { awsTestEnv, createRole, startMoto, type Moto } from './peers/moto.js';
import { VENV_BIN } from './peers/paths.js';

const ACCT = '123456789012';
const USER = `arn:aws:iam::${ACCT}:user/broker-svc`;
const SESSION = `arn:aws:sts::${ACCT}:assumed-role/BrokerService/i-0abc`;

function policy(...Statement: object[]): object {
  return { Version: '2012-10-17', Statement };
}
const allowAll = (AWS: string | string[], extra: object = {}) => ({ Effect: 'Allow', Principal: { AWS }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'], ...extra });

describe('evaluateTrustPolicy', () => {
  test('an exact principal with the three actions is allowed; other actions are not', () => {
    const doc = policy(allowAll(USER));
    for (const a of ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity']) assert.equal(evaluateTrustPolicy(doc, USER, a).decision, 'allowed');
    assert.equal(evaluateTrustPolicy(doc, USER, 'sts:AssumeRoleWithWebIdentity').decision, 'not-allowed');
    assert.equal(evaluateTrustPolicy(doc, `arn:aws:iam::${ACCT}:user/someone-else`, 'sts:AssumeRole').decision, 'not-allowed');
  });

  test('action wildcards match case-insensitively; a single statement object is accepted', () => {
    const doc = { Version: '2012-10-17', Statement: { Effect: 'Allow', Principal: { AWS: USER }, Action: 'STS:*' } };
    assert.equal(evaluateTrustPolicy(doc, USER, 'sts:TagSession').decision, 'allowed');
    const q = policy({ Effect: 'Allow', Principal: { AWS: USER }, Action: 'sts:?agSession' });
    assert.equal(evaluateTrustPolicy(q, USER, 'sts:TagSession').decision, 'allowed');
    assert.equal(evaluateTrustPolicy(q, USER, 'sts:AssumeRole').decision, 'not-allowed');
  });

  test('the account root ARN, the bare account id and "*" all name the broker, with a note', () => {
    for (const AWS of [`arn:aws:iam::${ACCT}:root`, ACCT, '*']) {
      const d = evaluateTrustPolicy(policy(allowAll(AWS)), USER, 'sts:AssumeRole');
      assert.equal(d.decision, 'allowed', AWS);
      assert.equal(d.matchedAs, AWS === '*' ? 'anyone' : 'account');
    }
    assert.equal(evaluateTrustPolicy(policy(allowAll('arn:aws:iam::210987654321:root')), USER, 'sts:AssumeRole').decision, 'not-allowed');
    assert.equal(evaluateTrustPolicy(policy({ Effect: 'Allow', Principal: '*', Action: 'sts:AssumeRole' }), USER, 'sts:AssumeRole').matchedAs, 'anyone');
  });

  test('a role session matches its role ARN, with or without a path, not another role', () => {
    assert.equal(evaluateTrustPolicy(policy(allowAll(`arn:aws:iam::${ACCT}:role/BrokerService`)), SESSION, 'sts:TagSession').decision, 'allowed');
    assert.equal(evaluateTrustPolicy(policy(allowAll(`arn:aws:iam::${ACCT}:role/svc/BrokerService`)), SESSION, 'sts:TagSession').decision, 'allowed');
    assert.equal(evaluateTrustPolicy(policy(allowAll(`arn:aws:iam::${ACCT}:role/Other`)), SESSION, 'sts:TagSession').decision, 'not-allowed');
    assert.equal(evaluateTrustPolicy(policy(allowAll(`arn:aws:iam::999999999999:role/BrokerService`)), SESSION, 'sts:TagSession').decision, 'not-allowed');
    assert.equal(trustPrincipalFor(SESSION), `arn:aws:iam::${ACCT}:role/BrokerService`);
    assert.equal(trustPrincipalFor(USER), USER);
  });

  test('Service and Federated principals do not name the broker', () => {
    const doc = policy({ Effect: 'Allow', Principal: { Service: 'ec2.amazonaws.com', Federated: `arn:aws:iam::${ACCT}:oidc-provider/x` }, Action: 'sts:*' });
    assert.equal(evaluateTrustPolicy(doc, USER, 'sts:AssumeRole').decision, 'not-allowed');
  });

  test('an explicit Deny wins over an Allow; a conditional Deny is only noted', () => {
    const deny = { Sid: 'NoTags', Effect: 'Deny', Principal: { AWS: '*' }, Action: 'sts:TagSession' };
    const d = evaluateTrustPolicy(policy(allowAll(USER), deny), USER, 'sts:TagSession');
    assert.deepEqual([d.decision, d.statement], ['denied', '"NoTags"']);
    assert.equal(evaluateTrustPolicy(policy(allowAll(USER), deny), USER, 'sts:AssumeRole').decision, 'allowed');
    const cond = evaluateTrustPolicy(policy(allowAll(USER), { ...deny, Condition: { StringNotEquals: { 'aws:RequestTag/x': 'y' } } }), USER, 'sts:TagSession');
    assert.equal(cond.decision, 'allowed');
    assert.match(cond.notes.join('\n'), /may deny sts:TagSession \(has conditions, not evaluated\)/);
  });

  test('an Allow with conditions counts, with a note', () => {
    const d = evaluateTrustPolicy(policy(allowAll(USER, { Condition: { StringEquals: { 'sts:ExternalId': 'x' } } })), USER, 'sts:AssumeRole');
    assert.equal(d.decision, 'allowed');
    assert.match(d.notes[0]!, /has conditions, not evaluated/);
    const both = evaluateTrustPolicy(policy(allowAll(USER, { Condition: { StringEquals: { 'sts:ExternalId': 'x' } } }), allowAll(USER)), USER, 'sts:AssumeRole');
    assert.deepEqual([both.decision, both.statement, both.notes], ['allowed', 'Statement[1]', []], 'an unconditional Allow needs no note');
  });

  test('NotAction: applies to every action it does not list', () => {
    const doc = policy({ Effect: 'Allow', Principal: { AWS: USER }, NotAction: 'sts:SetSourceIdentity' });
    assert.equal(evaluateTrustPolicy(doc, USER, 'sts:TagSession').decision, 'allowed');
    assert.equal(evaluateTrustPolicy(doc, USER, 'sts:SetSourceIdentity').decision, 'not-allowed');
    const deny = policy(allowAll(USER), { Effect: 'Deny', Principal: '*', NotAction: 'sts:AssumeRole' });
    assert.equal(evaluateTrustPolicy(deny, USER, 'sts:AssumeRole').decision, 'allowed');
    assert.equal(evaluateTrustPolicy(deny, USER, 'sts:TagSession').decision, 'denied');
  });

  test('Deny + NotPrincipal spares the broker only when all its forms are listed; Allow + NotPrincipal is not evaluated', () => {
    const role = `arn:aws:iam::${ACCT}:role/BrokerService`;
    const root = `arn:aws:iam::${ACCT}:root`;
    const denyAllBut = (AWS: string[]) => policy(allowAll(role), { Effect: 'Deny', NotPrincipal: { AWS }, Action: 'sts:*' });
    assert.equal(evaluateTrustPolicy(denyAllBut([role, SESSION, root]), SESSION, 'sts:AssumeRole').decision, 'allowed');
    assert.equal(evaluateTrustPolicy(denyAllBut([role]), SESSION, 'sts:AssumeRole').decision, 'denied');
    assert.equal(evaluateTrustPolicy(denyAllBut([role, root]), SESSION, 'sts:AssumeRole').decision, 'denied');
    const notAllow = evaluateTrustPolicy(policy({ Effect: 'Allow', NotPrincipal: { AWS: 'arn:aws:iam::1:user/x' }, Action: 'sts:*' }), USER, 'sts:AssumeRole');
    assert.equal(notAllow.decision, 'not-allowed');
    assert.match(notAllow.notes[0]!, /NotPrincipal with Allow/);
  });

  test('a document without statements is an error, not an allow', () => {
    assert.throws(() => evaluateTrustPolicy({ Version: '2012-10-17' }, USER, 'sts:AssumeRole'), /no Statement/);
  });
});

describe('evaluateTrustPolicy agrees with an independent evaluator (@cloud-copilot/iam-simulate)', () => {
  // Test-only oracle (a devDependency; AGPL, so not shipped). NotPrincipal is left out: the IAM User
  // Guide leaves partial NotPrincipal lists open ("AWS might validate the account first"), and there
  // this check is deliberately stricter.
  const role = `arn:aws:iam::${ACCT}:role/BrokerService`;
  const docs = [
    policy(allowAll(USER)),
    policy({ Effect: 'Allow', Principal: { AWS: USER }, Action: ['sts:AssumeRole', 'sts:TagSession'] }),
    policy({ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'sts:*' }),
    policy({ Effect: 'Allow', Principal: { AWS: ACCT }, Action: 'sts:AssumeRole' }),
    policy({ Effect: 'Allow', Principal: { AWS: role }, Action: 'sts:*' }),
    policy({ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:role/svc/BrokerService` }, Action: 'sts:*' }),
    policy({ Effect: 'Allow', Principal: { AWS: [`arn:aws:iam::${ACCT}:role/Other`, 'arn:aws:iam::210987654321:root'] }, Action: 'sts:*' }),
    policy({ Effect: 'Allow', Principal: '*', Action: 'sts:AssumeRole' }),
    policy(allowAll(USER), { Effect: 'Deny', Principal: { AWS: '*' }, Action: 'sts:TagSession' }),
    policy(allowAll(role), { Effect: 'Deny', Principal: { AWS: role }, Action: 'sts:Set*' }),
    policy({ Effect: 'Allow', Principal: { AWS: USER }, NotAction: 'sts:SetSourceIdentity' }),
    policy({ Effect: 'Allow', Principal: { Service: 'ec2.amazonaws.com' }, Action: 'sts:AssumeRole' }),
  ];
  const expected = { allowed: 'Allowed', denied: 'ExplicitlyDenied', 'not-allowed': 'ImplicitlyDenied' } as const;

  test('same decision for every policy, principal and action', async () => {
    let compared = 0;
    for (const [i, doc] of docs.entries()) {
      for (const who of [USER, SESSION]) {
        for (const action of ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity']) {
          const r = await runSimulation({
            // The caller's own identity policy allows everything, so only the trust policy decides.
            identityPolicies: [{ name: 'all', policy: policy({ Effect: 'Allow', Action: 'sts:*', Resource: '*' }) }],
            serviceControlPolicies: [],
            resourceControlPolicies: [],
            resourcePolicy: doc,
            request: { action, principal: who, resource: { accountId: ACCT, resource: `arn:aws:iam::${ACCT}:role/target` }, contextVariables: {} },
          } as Parameters<typeof runSimulation>[0], {});
          assert.ok(r.resultType !== 'error', JSON.stringify(r));
          const mine = evaluateTrustPolicy(doc, who, action).decision;
          assert.equal(expected[mine], r.overallResult, `policy #${i}, ${who}, ${action}`);
          compared++;
        }
      }
    }
    assert.equal(compared, docs.length * 6);
  });
});

describe('checkRoleTrust against moto', () => {
  let moto: Moto;
  let iam: IAMClient;
  let brokerArn: string;
  const env = () => awsTestEnv(moto.url);

  before(async () => {
    moto = await startMoto();
    const sts = makeStsClient({ region: 'us-east-1', endpoint: moto.url });
    // The SDK's standard chain picks the test keys up from the environment, as it would real ones.
    Object.assign(process.env, env());
    brokerArn = await resolveBrokerPrincipal(sts);
    sts.destroy();
    iam = makeIamClient({ region: 'us-east-1', endpoint: moto.url });
    const trustAll = policy(allowAll(trustPrincipalFor(brokerArn)));
    const noTag = policy({ Effect: 'Allow', Principal: { AWS: brokerArn }, Action: ['sts:AssumeRole', 'sts:SetSourceIdentity'] });
    await createRole(moto.url, 'broker-good', trustAll, 43200);
    await createRole(moto.url, 'broker-notag', noTag, 43200);
    await createRole(moto.url, 'broker-short', trustAll, 3600);
  });
  after(async () => {
    iam?.destroy();
    await moto?.stop();
  });

  const arn = (name: string) => `arn:aws:iam::${ACCT}:role/${name}`;
  const byTemplate = (fs: TrustFinding[]) => Object.fromEntries(fs.map((f) => [f.template, f]));

  test('the broker principal comes from STS GetCallerIdentity', () => {
    assert.match(brokerArn, /^arn:aws:(iam|sts)::123456789012:/);
  });

  test('finds each kind of problem, and only those', async () => {
    const f = byTemplate(await checkRoleTrust({
      iam,
      brokerPrincipalArn: brokerArn,
      roles: [
        { template: 'good', roleArn: arn('broker-good'), durationSeconds: 8 * 3600 },
        { template: 'notag', roleArn: arn('broker-notag'), durationSeconds: 3600 },
        { template: 'short', roleArn: arn('broker-short'), durationSeconds: 2 * 3600 },
        { template: 'missing', roleArn: arn('broker-missing'), durationSeconds: 3600 },
        { template: 'bad-arn', roleArn: 'arn:aws:iam::123456789012:user/broker-good', durationSeconds: 3600 },
      ],
    }));
    assert.deepEqual(f.good!.problems, []);
    assert.equal(f.good!.ok, true);

    assert.equal(f.notag!.ok, false);
    assert.deepEqual(f.notag!.problems.map((p) => p.check), ['tag-session']);
    const expected = JSON.stringify({ Effect: 'Allow', Principal: { AWS: trustPrincipalFor(brokerArn) }, Action: 'sts:TagSession' });
    assert.ok(f.notag!.problems[0]!.hint.includes(expected), f.notag!.problems[0]!.hint);

    assert.deepEqual(f.short!.problems.map((p) => p.check), ['max-session-duration']);
    assert.match(f.short!.problems[0]!.hint, /--max-session-duration 7200/);

    assert.deepEqual(f.missing!.problems.map((p) => p.check), ['role']);
    assert.match(f.missing!.problems[0]!.message, /does not exist/);
    assert.deepEqual(f['bad-arn']!.problems.map((p) => p.check), ['role']);
  });

  test('the hints work: the statement and the create-role command they give fix the role', async () => {
    await createRole(moto.url, 'broker-fixme', policy({ Effect: 'Allow', Principal: { AWS: brokerArn }, Action: 'sts:AssumeRole' }));
    const roles = [
      { template: 'fixme', roleArn: arn('broker-fixme'), durationSeconds: 3600 },
      { template: 'new', roleArn: arn('svc/broker-new'), durationSeconds: 3600 },
    ];
    const [fixme, missing] = await checkRoleTrust({ iam, brokerPrincipalArn: brokerArn, roles });
    assert.deepEqual(fixme!.problems.map((p) => p.check), ['tag-session', 'set-source-identity']);
    // Add the suggested statement to the trust policy, as an admin would.
    const statement = JSON.parse(/add this statement to the trust policy of broker-fixme: (\{.*\})$/.exec(fixme!.problems[0]!.hint)![1]!);
    const current = await iam.send(new GetRoleCommand({ RoleName: 'broker-fixme' }));
    const doc = JSON.parse(decodeURIComponent(current.Role!.AssumeRolePolicyDocument!));
    doc.Statement.push(statement);
    await iam.send(new UpdateAssumeRolePolicyCommand({ RoleName: 'broker-fixme', PolicyDocument: JSON.stringify(doc) }));
    // Run the suggested create-role command with the real AWS CLI.
    const command = /^create it: (aws iam create-role .*') \(or fix/.exec(missing!.problems[0]!.hint)![1]!;
    const created = await run('sh', ['-c', command], { env: { ...process.env, ...env(), PATH: `${VENV_BIN}:${process.env.PATH}` } });
    assert.equal(created.code, 0, created.stderr);

    const after = await checkRoleTrust({ iam, brokerPrincipalArn: brokerArn, roles });
    assert.deepEqual(after.map((f) => [f.template, f.problems]), [['fixme', []], ['new', []]]);
  });

  test('a role session caller is held to the 1 h role-chaining cap', async () => {
    const session = `arn:aws:sts::${ACCT}:assumed-role/BrokerService/s1`;
    await createRole(moto.url, 'broker-chain', policy(allowAll(trustPrincipalFor(session))), 43200);
    const [f] = await checkRoleTrust({ iam, brokerPrincipalArn: session, roles: [{ template: 'chain', roleArn: arn('broker-chain'), durationSeconds: 7200 }] });
    assert.deepEqual(f!.problems.map((p) => p.check), ['max-session-duration']);
    assert.match(f!.problems[0]!.message, /role-chained/);
  });

  test('a role in another account is reported, not silently read from ours', async () => {
    const [f] = await checkRoleTrust({ iam, brokerPrincipalArn: brokerArn, roles: [{ template: 'x', roleArn: 'arn:aws:iam::210987654321:role/broker-good', durationSeconds: 3600 }] });
    assert.deepEqual(f!.problems.map((p) => p.check), ['role']);
    assert.match(f!.problems[0]!.message, /account 210987654321/);
  });

  describe('broker policy check --aws', () => {
    let dir: string;
    before(() => {
      dir = mkdtempSync(join(tmpdir(), 'broker-trust-'));
      const yaml = (name: string, role: string, lifetime: string) => [
        `name: ${name}`,
        'description: trust check fixture',
        'allowed: { groups: [developers] }',
        `session: { maxDuration: 8h, credentialLifetime: ${lifetime} }`,
        'aws:',
        `  roleArn: ${arn(role)}`,
        '  region: us-east-1',
        '  policy: { Version: "2012-10-17", Statement: [{ Effect: Allow, Action: "s3:GetObject", Resource: "arn:aws:s3:::b/*" }] }',
        '',
      ].join('\n');
      writeFileSync(join(dir, 't-good.yaml'), yaml('t-good', 'broker-good', '1h'));
      writeFileSync(join(dir, 't-notag.yaml'), yaml('t-notag', 'broker-notag', '1h'));
    });

    test('exits 1 and reports the missing sts:TagSession, as text and as JSON', async () => {
      const text = await broker(['policy', 'check', '--aws', '--dir', dir, '--endpoint-url', moto.url], env());
      assert.equal(text.code, EXIT_NO, text.stderr);
      assert.equal(text.stderr, '', 'the findings are the result: stdout');
      assert.match(text.stdout, /ok {3}t-good/);
      assert.match(text.stdout, /FAIL t-notag[\s\S]*\[tag-session\][\s\S]*sts:TagSession/);

      const json = await broker(['policy', 'check', '--aws', '--dir', dir, '--endpoint-url', moto.url, '--json'], env());
      assert.equal(json.code, EXIT_NO, json.stderr);
      const out = JSON.parse(json.stdout) as { brokerPrincipalArn: string; findings: TrustFinding[] };
      assert.equal(out.brokerPrincipalArn, brokerArn);
      assert.deepEqual(out.findings.map((f) => [f.template, f.ok, f.problems.map((p) => p.check)]).sort(), [
        ['t-good', true, []],
        ['t-notag', false, ['tag-session']],
      ]);
    });

    test('exits 0 when every role trusts the broker', async () => {
      const good = mkdtempSync(join(tmpdir(), 'broker-trust-ok-'));
      writeFileSync(join(good, 't-good.yaml'), `name: t-good\ndescription: x\nallowed: { groups: [developers] }\nsession: { maxDuration: 8h, credentialLifetime: 1h }\naws:\n  roleArn: ${arn('broker-good')}\n  region: us-east-1\n  policy: { Version: "2012-10-17", Statement: [{ Effect: Allow, Action: "s3:GetObject", Resource: "arn:aws:s3:::b/*" }] }\n`);
      const r = await broker(['policy', 'check', '--aws', '--dir', good, '--endpoint-url', moto.url], env());
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /all 1 template role\(s\) trust the broker/);
    });

    test('without --aws it says what --aws does and fails', async () => {
      const r = await broker(['policy', 'check', '--dir', dir], env());
      assert.equal(r.code, EXIT_CODES.invalid_request);
      assert.match(r.stderr, /needs a target: --aws[\s\S]*hint: broker policy check --aws/);
    });
  });
});
