/**
 * What each shipped template's session policy grants, evaluated rather than read: for every template
 * with an aws section, the policy is rendered as the service renders it (buildAssumeRoleRequest)
 * and evaluated with @cloud-copilot/iam-simulate (moto enforces no IAM). The intended actions on the
 * intended resource are allowed; the same actions on a neighbour (another function, prefix, session's
 * scratch area, log group) and out-of-scope actions are denied. Then `broker policy test`, the same
 * evaluation for admins, run compiled.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { EXIT_CODES } from '../broker/errors.js';
import { loadTemplatesOrThrow } from '../broker/templates/load.js';
import { buildAssumeRoleRequest } from '../broker/templates/render.js';
import type { TaskTemplate } from '../broker/templates/schema.js';
import { evaluateSessionPolicy } from '../broker/templates/simulate.js';
import { broker } from './peers/cli.js';
import { POLICIES_DIR, REPO_ROOT } from './peers/paths.js';

const ACCT = '123456789012';
const DEVELOPER = 'alice@example.com';
const SESSION = 'abcdefgh23';
const OTHER_SESSION = 'zzzzzzzz22';
const shipped = loadTemplatesOrThrow(POLICIES_DIR);
/** s3-artifacts as shipped before its prefix was re-rooted under artifacts/. */
const OLD_DIR = join(REPO_ROOT, 'test', 'fixtures', 'old-templates');

interface Case { action: string; resource: string; context?: Record<string, string>; params?: Record<string, string>; why?: string }
interface Scope { params: Record<string, string>; allowed: Case[]; denied: Case[] }

const lambda = (fn: string, region = 'eu-west-1', acct = ACCT) => `arn:aws:lambda:${region}:${acct}:function:${fn}`;
const logGroup = (name: string) => `arn:aws:logs:eu-west-1:${ACCT}:log-group:${name}`;
const s3 = (key: string, bucket = 'acme-build-artifacts') => `arn:aws:s3:::${bucket}/${key}`;
const BUCKET = 'arn:aws:s3:::acme-build-artifacts';
const mine = `scratch/${DEVELOPER}/${SESSION}`;

/** Asked of every template: none of these belongs to any task. */
const OUT_OF_SCOPE: Case[] = [
  { action: 'iam:CreateUser', resource: `arn:aws:iam::${ACCT}:user/mallory` },
  { action: 'iam:AttachRolePolicy', resource: `arn:aws:iam::${ACCT}:role/broker-deploy-lambda` },
  { action: 'sts:AssumeRole', resource: `arn:aws:iam::${ACCT}:role/admin` },
  { action: 'lambda:DeleteFunction', resource: lambda('checkout-api') },
  { action: 's3:DeleteBucket', resource: BUCKET },
];

/**
 * One entry per shipped template with an aws section (a test below fails when one is missing).
 * Each case may override the template's sample parameters.
 */
const SCOPES: Record<string, Scope> = {
  'deploy-lambda': {
    params: { function: 'checkout-api' },
    allowed: [
      { action: 'lambda:GetFunction', resource: lambda('checkout-api') },
      { action: 'lambda:UpdateFunctionCode', resource: lambda('checkout-api') },
      { action: 'lambda:UpdateFunctionConfiguration', resource: lambda('checkout-api') },
      { action: 'lambda:PublishVersion', resource: lambda('checkout-api') },
      { action: 'lambda:UpdateAlias', resource: lambda('checkout-api:live') },
      { action: 'logs:FilterLogEvents', resource: logGroup('/aws/lambda/checkout-api') },
      { action: 'logs:GetLogEvents', resource: `${logGroup('/aws/lambda/checkout-api')}:log-stream:2026/11/22/abc` },
    ],
    denied: [
      { action: 'lambda:UpdateFunctionCode', resource: lambda('payments'), why: 'another function' },
      { action: 'lambda:UpdateFunctionCode', resource: lambda('checkout-api-v2'), why: 'a function whose name starts with this one' },
      { action: 'lambda:UpdateFunctionCode', resource: lambda('checkout-api', 'eu-central-1'), why: 'the same name in another region' },
      { action: 'lambda:UpdateFunctionCode', resource: lambda('checkout-api', 'eu-west-1', '210987654321'), why: 'the same name in another account' },
      { action: 'lambda:UpdateAlias', resource: lambda('payments:live'), why: "another function's alias" },
      { action: 'logs:FilterLogEvents', resource: logGroup('/aws/lambda/payments'), why: "another function's logs" },
      { action: 'logs:FilterLogEvents', resource: logGroup('/aws/lambda/checkout-api-v2'), why: 'a log group whose name starts with this one' },
      { action: 'lambda:AddPermission', resource: lambda('checkout-api'), why: "changing who may invoke it (its resource policy)" },
      { action: 'lambda:InvokeFunction', resource: lambda('checkout-api'), why: 'not granted: deploying is not running' },
      { action: 'logs:DeleteLogGroup', resource: logGroup('/aws/lambda/checkout-api'), why: 'deleting its logs' },
    ],
  },
  'read-cloudwatch-logs': {
    params: { logGroup: '/aws/lambda/checkout-api' },
    // logs:DescribeLogGroups is left out: the Service Authorization Reference gives it no resource
    // type, so the evaluator asks for Resource "*", while CloudWatch Logs authorizes it against
    // `log-group::log-stream:` (hashicorp/terraform-provider-aws#8804), which `log-group:*` matches.
    allowed: [
      { action: 'logs:FilterLogEvents', resource: logGroup('/aws/lambda/checkout-api') },
      { action: 'logs:StartQuery', resource: logGroup('/aws/lambda/checkout-api') },
      { action: 'logs:GetQueryResults', resource: logGroup('/aws/lambda/checkout-api') },
      { action: 'logs:DescribeLogStreams', resource: logGroup('/aws/lambda/checkout-api') },
      { action: 'logs:GetLogEvents', resource: `${logGroup('/aws/lambda/checkout-api')}:log-stream:2026/11/22/abc` },
      { action: 'logs:StopQuery', resource: '*' },
    ],
    denied: [
      { action: 'logs:FilterLogEvents', resource: logGroup('/aws/lambda/payments'), why: 'another log group' },
      { action: 'logs:FilterLogEvents', resource: logGroup('/aws/lambda/checkout-api-v2'), why: 'a log group whose name starts with this one' },
      { action: 'logs:StartQuery', resource: logGroup('/aws/lambda'), why: 'the parent path' },
      { action: 'logs:GetQueryResults', resource: logGroup('/aws/lambda/payments'), why: "another log group's query results" },
      { action: 'logs:GetLogEvents', resource: `${logGroup('/aws/lambda/payments')}:log-stream:x`, why: "another log group's streams" },
      { action: 'logs:DeleteLogGroup', resource: logGroup('/aws/lambda/checkout-api'), why: 'read-only: no deletes' },
      { action: 'logs:PutRetentionPolicy', resource: logGroup('/aws/lambda/checkout-api'), why: 'read-only: no retention changes' },
      { action: 'logs:PutSubscriptionFilter', resource: logGroup('/aws/lambda/checkout-api'), why: 'read-only: no subscriptions (a way out for the data)' },
    ],
  },
  's3-artifacts': {
    params: { prefix: 'checkout-api/builds' },
    allowed: [
      { action: 's3:GetObject', resource: s3('artifacts/checkout-api/builds/app.zip') },
      { action: 's3:PutObject', resource: s3('artifacts/checkout-api/builds/app.zip') },
      { action: 's3:ListBucket', resource: BUCKET, context: { 's3:prefix': 'artifacts/checkout-api/builds/' } },
      { action: 's3:GetObject', resource: s3(`${mine}/notes.txt`) },
      { action: 's3:PutObject', resource: s3(`${mine}/notes.txt`) },
      { action: 's3:DeleteObject', resource: s3(`${mine}/notes.txt`) },
      { action: 's3:ListBucket', resource: BUCKET, context: { 's3:prefix': `${mine}/` } },
      { action: 's3:PutObject', resource: s3('artifacts/scratch/x'), params: { prefix: 'scratch' }, why: 'prefix=scratch is a prefix under artifacts/' },
    ],
    denied: [
      { action: 's3:GetObject', resource: s3('artifacts/checkout-api/other/app.zip'), why: 'another prefix' },
      { action: 's3:GetObject', resource: s3('artifacts/checkout-api/builds-old/app.zip'), why: 'a prefix that starts with this one' },
      { action: 's3:GetObject', resource: s3('checkout-api/builds/app.zip'), why: 'the same prefix outside artifacts/' },
      { action: 's3:DeleteObject', resource: s3('artifacts/checkout-api/builds/app.zip'), why: 'artifacts are not deleted' },
      { action: 's3:ListBucket', resource: BUCKET, context: { 's3:prefix': 'artifacts/' }, why: 'listing other prefixes' },
      { action: 's3:ListBucket', resource: BUCKET, why: 'listing the whole bucket' },
      { action: 's3:PutObject', resource: s3(`scratch/bob@example.com/${OTHER_SESSION}/notes.txt`), why: "another developer's scratch" },
      { action: 's3:GetObject', resource: s3(`scratch/${DEVELOPER}/${OTHER_SESSION}/notes.txt`), why: "the same developer's other session's scratch" },
      { action: 's3:ListBucket', resource: BUCKET, context: { 's3:prefix': 'scratch/' }, why: "listing every session's scratch" },
      { action: 's3:GetObject', resource: s3('artifacts/checkout-api/builds/app.zip', 'acme-payroll'), why: 'another bucket' },
      { action: 's3:PutBucketPolicy', resource: BUCKET, why: "changing the bucket's policy" },
      // The bug this layout fixes: the parameter's prefix could name the scratch root.
      { action: 's3:PutObject', resource: s3(`scratch/bob@example.com/${OTHER_SESSION}/notes.txt`), params: { prefix: 'scratch' }, why: "prefix=scratch: another session's scratch" },
      { action: 's3:GetObject', resource: s3(`scratch/${DEVELOPER}/${OTHER_SESSION}/notes.txt`), params: { prefix: 'scratch' }, why: "prefix=scratch: an earlier session's scratch" },
      { action: 's3:ListBucket', resource: BUCKET, context: { 's3:prefix': 'scratch/bob@example.com/' }, params: { prefix: 'scratch' }, why: "prefix=scratch: listing another developer's scratch" },
    ],
  },
};

async function decide(t: TaskTemplate, scope: Scope, c: Case) {
  const req = buildAssumeRoleRequest(t, { developer: DEVELOPER, sessionId: SESSION, agent: 'claude-code', params: c.params ?? scope.params }, 3600);
  return evaluateSessionPolicy(req, { action: c.action, resource: c.resource, context: c.context ?? {} });
}
const label = (c: Case) => `${c.action} on ${c.resource}${c.context ? ` ${JSON.stringify(c.context)}` : ''}${c.params ? ` with ${JSON.stringify(c.params)}` : ''}${c.why ? ` (${c.why})` : ''}`;

describe('session policies, evaluated (@cloud-copilot/iam-simulate)', () => {
  it('every shipped template with an aws section has its cases here, and only those', () => {
    const aws = [...shipped.values()].filter((t) => t.aws).map((t) => t.name).sort();
    assert.deepEqual(Object.keys(SCOPES).sort(), aws, 'add the new template to SCOPES: its intended, neighbouring and out-of-scope requests');
  });

  for (const [name, scope] of Object.entries(SCOPES)) {
    describe(name, () => {
      const t = () => {
        const found = shipped.get(name);
        assert.ok(found?.aws, `shipped template ${name} with an aws section`);
        return found;
      };
      it('allows the intended actions on the intended resources', async () => {
        for (const c of scope.allowed) {
          const d = await decide(t(), scope, c);
          assert.equal(d.decision, 'allowed', label(c));
          assert.ok(d.decidedBy.length > 0, `an Allow statement decided: ${label(c)}`);
        }
      });
      it('denies the same actions on neighbours', async () => {
        for (const c of scope.denied) assert.equal((await decide(t(), scope, c)).decision, 'denied', label(c));
      });
      it('denies out-of-scope actions', async () => {
        for (const c of OUT_OF_SCOPE) assert.equal((await decide(t(), scope, c)).decision, 'denied', label(c));
      });
    });
  }

  it('catches the old s3-artifacts layout: prefix=scratch reached every session\'s scratch area', async () => {
    const old = loadTemplatesOrThrow(OLD_DIR).get('s3-artifacts')!;
    const scope = SCOPES['s3-artifacts']!;
    const leaks = [];
    for (const c of scope.denied) if ((await decide(old, scope, c)).decision === 'allowed') leaks.push(label(c));
    // (The old layout also "leaks" checkout-api/builds/ outside artifacts/: that was its own place.)
    assert.deepEqual(leaks.filter((l) => l.includes('scratch/')), scope.denied.filter((c) => c.params?.prefix === 'scratch').map(label),
      'every prefix=scratch case leaks under the old layout, so the table above fails on it');
  });

  it('says which statement decided, and an explicit Deny wins', async () => {
    const t = shipped.get('s3-artifacts')!;
    const req = buildAssumeRoleRequest(t, { developer: DEVELOPER, sessionId: SESSION, agent: 'a', params: { prefix: 'x' } }, 900);
    const allowed = await evaluateSessionPolicy(req, { action: 's3:DeleteObject', resource: s3(`${mine}/f`), context: {} });
    assert.deepEqual(allowed.decidedBy, [{ index: 2, sid: 'SessionScratch', effect: 'Allow' }]);
    const withDeny = { ...req, Policy: JSON.stringify({ ...JSON.parse(req.Policy), Statement: [...JSON.parse(req.Policy).Statement, { Effect: 'Deny', Action: 's3:DeleteObject', Resource: '*' }] }) };
    const denied = await evaluateSessionPolicy(withDeny, { action: 's3:DeleteObject', resource: s3(`${mine}/f`), context: {} });
    assert.equal(denied.result, 'ExplicitlyDenied');
    assert.deepEqual(denied.decidedBy, [{ index: 3, sid: undefined, effect: 'Deny' }]);
    const none = await evaluateSessionPolicy(req, { action: 's3:DeleteBucket', resource: BUCKET, context: {} });
    assert.equal(none.result, 'ImplicitlyDenied');
    assert.deepEqual(none.decidedBy, []);
  });

  it('evaluates the session as AWS sees it: its principal, tags and SourceIdentity', async () => {
    const t = shipped.get('deploy-lambda')!;
    const req = buildAssumeRoleRequest(t, { developer: DEVELOPER, sessionId: SESSION, agent: 'claude-code', params: { function: 'checkout-api' } }, 900);
    const d = await evaluateSessionPolicy(req, { action: 'lambda:GetFunction', resource: lambda('checkout-api'), context: {} });
    assert.equal(d.principal, `arn:aws:sts::${ACCT}:assumed-role/broker-deploy-lambda/${DEVELOPER}.deploy-lambda.${SESSION}`);
    assert.equal(d.context['aws:SourceIdentity'], DEVELOPER);
    assert.equal(d.context['aws:PrincipalTag/broker:session'], SESSION);
    // A policy conditioned on the session's own tag sees it.
    const tagged = { ...req, Policy: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'lambda:GetFunction', Resource: '*', Condition: { StringEquals: { 'aws:PrincipalTag/broker:session': SESSION } } }] }) };
    assert.equal((await evaluateSessionPolicy(tagged, { action: 'lambda:GetFunction', resource: lambda('x'), context: {} })).decision, 'allowed');
  });
});

describe('broker policy test (compiled CLI)', () => {
  const base = ['policy', 'test', 's3-artifacts', '--dir', POLICIES_DIR, '--as', DEVELOPER, '--session', SESSION];

  it('allowed: exit 0, the deciding statement and the scope of the check', async () => {
    const r = await broker([...base, '--param', 'prefix=checkout-api/builds', '--action', 's3:PutObject', '--resource', s3('artifacts/checkout-api/builds/app.zip')], {});
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^allowed: s3:PutObject on arn:aws:s3:::acme-build-artifacts\/artifacts\/checkout-api\/builds\/app\.zip\n/);
    assert.match(r.stdout, /allowed by aws\.policy\.Statement\[0\] \(Sid ObjectsUnderPrefix\)/);
    assert.match(r.stdout, /session policy alone: AWS also intersects it with the role's identity policies, its permission boundary, SCPs/);
  });
  it("denied: exit 1; prefix=scratch does not reach another session's scratch", async () => {
    const r = await broker([...base, '--param', 'prefix=scratch', '--action', 's3:PutObject', '--resource', s3(`scratch/bob@example.com/${OTHER_SESSION}/x`)], {});
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /^denied: s3:PutObject/);
    assert.match(r.stdout, /no statement of s3-artifacts .* allows it \(an implicit deny\)/);
    const old = await broker([...base.slice(0, 3), '--dir', OLD_DIR, ...base.slice(5), '--param', 'prefix=scratch', '--action', 's3:PutObject', '--resource', s3(`scratch/bob@example.com/${OTHER_SESSION}/x`)], {});
    assert.equal(old.code, 0, 'the old layout allowed it');
  });
  it('--context gives condition keys; without it the output says which were absent', async () => {
    const args = [...base, '--param', 'prefix=checkout-api/builds', '--action', 's3:ListBucket', '--resource', BUCKET];
    const without = await broker(args, {});
    assert.equal(without.code, 1);
    assert.match(without.stdout, /conditions on s3:prefix, not given: evaluated as absent/);
    const r = await broker([...args, '--context', 's3:prefix=artifacts/checkout-api/builds/', '--json'], {});
    assert.equal(r.code, 0, r.stderr);
    const x = JSON.parse(r.stdout);
    assert.equal(x.decision, 'allowed');
    assert.deepEqual(x.decidedBy, [{ index: 1, sid: 'ListOnlyThePrefix', effect: 'Allow', path: 'aws.policy.Statement[1]' }]);
    assert.equal(x.context['s3:prefix'], 'artifacts/checkout-api/builds/');
    assert.equal(x.sessionId, SESSION);
    assert.match(x.scope, /session policy alone/);
  });
  it('bad input is a clear error with the exit status of its code, never 0 or 1 (denied)', async () => {
    const usage = EXIT_CODES.invalid_request;
    const cases: [string[], RegExp, number][] = [
      [[...base, '--param', 'prefix=x', '--action', 's3:GetObjet', '--resource', s3('x')], /Amazon S3 has no action "GetObjet"\n {2}hint: did you mean "s3:GetObject"\?/, usage],
      [[...base, '--param', 'prefix=x', '--action', 's3:Get*', '--resource', s3('x')], /has a wildcard; a request is one action/, usage],
      [[...base, '--param', 'prefix=x', '--action', 's3:GetObject', '--resource', s3('artifacts/*')], /has a wildcard; a request names one resource/, usage],
      [[...base, '--param', 'prefix=x', '--action', 's3:GetObject', '--resource', '*'], /s3:GetObject acts on resources: name one instead of \*/, usage],
      [[...base, '--param', 'prefix=x', '--action', 's3:GetObject', '--resource', lambda('x')], /s3:GetObject does not act on "arn:aws:lambda/, usage],
      [[...base, '--param', 'prefix=*', '--action', 's3:GetObject', '--resource', s3('x')], /--param prefix: does not match the pattern/, usage],
      [[...base, '--param', 'prefix', '--action', 's3:GetObject', '--resource', s3('x')], /--param "prefix" is not of the form name=value/, usage],
      [[...base, '--param', 'prefix=x', '--resource', s3('x')], /required option '--action/, usage],
      [[...base, '--param', 'prefix=x', '--action', 's3:GetObject', '--resource', s3('x'), '--context', 'prefix'], /--context "prefix" is not of the form service:key=value/, usage],
      [[...base.slice(0, 2), 'nope', ...base.slice(3), '--action', 's3:GetObject', '--resource', s3('x')], /no task template "nope"/, EXIT_CODES.not_found],
      [[...base.slice(0, 2), 'db-migrate', ...base.slice(3), '--action', 's3:GetObject', '--resource', s3('x')], /grants no AWS credentials: there is no session policy to test/, usage],
    ];
    for (const [args, message, code] of cases) {
      const r = await broker(args, {});
      assert.equal(r.code, code, `${args.join(' ')}\n${r.stderr}`);
      assert.match(r.stderr, message);
      assert.equal(r.stdout, '');
      assert.ok(!/at .*\.js:\d+/.test(r.stderr), 'no stack trace');
    }
  });
});
