/**
 * Task templates: the shipped ones validate clean, every broken fixture yields its problem (file,
 * field path, a useful message), rendering cannot be broken out of, and the CLI's `policy validate`
 * and `policy explain` (run compiled, as users run them) report what they should.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { BrokerError, EXIT_CODES, EXIT_NO } from '../broker/errors.js';
import { SESSION_NAME_RE, SOURCE_IDENTITY_RE } from '../broker/limits/aws.js';
import { loadTemplates, loadTemplatesOrThrow } from '../broker/templates/load.js';
import {
  buildAssumeRoleRequest, isAllowed, newSessionId, roleSessionName, SESSION_ID_RE, validateParams,
} from '../broker/templates/render.js';
import type { TaskTemplate } from '../broker/templates/schema.js';
import { buildVaultTokenRequest, vaultDisplayName } from '../broker/templates/vault-token-request.js';
import { broker } from './peers/cli.js';
import { POLICIES_DIR, REPO_ROOT } from './peers/paths.js';

const BROKEN_DIR = join(REPO_ROOT, 'test', 'fixtures', 'broken-policies');
const shipped = loadTemplatesOrThrow(POLICIES_DIR);
const get = (name: string): TaskTemplate => {
  const t = shipped.get(name);
  assert.ok(t, `shipped template ${name}`);
  return t;
};

/** Asserts a thrown BrokerError by code, and returns it for more checks. */
function brokerError(fn: () => unknown, code: BrokerError['code']): BrokerError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof BrokerError, `a BrokerError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return e;
  }
  assert.fail(`expected a BrokerError ${code}`);
}

/** A scratch directory with one template, for the cases the shipped ones cannot show. */
const scratchDirs: string[] = [];
function dirWith(name: string, yaml: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'broker-templates-'));
  scratchDirs.push(dir);
  writeFileSync(join(dir, `${name}.yaml`), yaml);
  return dir;
}
function templateFrom(name: string, yaml: string): TaskTemplate {
  return loadTemplatesOrThrow(dirWith(name, yaml)).get(name)!;
}
after(() => { for (const d of scratchDirs) rmSync(d, { recursive: true, force: true }); });

describe('shipped templates', () => {
  it('validate clean', () => {
    const { templates, problems } = loadTemplates(POLICIES_DIR);
    assert.deepEqual(problems, []);
    assert.deepEqual([...templates.keys()], ['db-migrate', 'deploy-lambda', 'read-cloudwatch-logs', 's3-artifacts']);
  });
  it('are normalized: seconds, compiled anchored patterns, defaults', () => {
    const t = get('deploy-lambda');
    assert.equal(t.maxSessionSeconds, 8 * 3600);
    assert.equal(t.credentialLifetimeSeconds, 3600);
    assert.equal(t.file, join(POLICIES_DIR, 'deploy-lambda.yaml'));
    const [fn] = t.parameters;
    assert.equal(fn?.name, 'function');
    assert.ok(fn.regex.test('checkout-api'));
    assert.ok(!fn.regex.test('checkout-api/other'), 'anchored at both ends');
    assert.deepEqual(t.aws?.managedPolicyArns, []);
    assert.equal(t.aws?.allowBroadWildcard, false);
  });
});

describe('shipped parameter patterns', () => {
  const accepts = (template: string, value: string) => get(template).parameters[0]!.regex.test(value);
  it('accept every legitimate name', () => {
    for (const g of ['/aws/lambda/checkout-api', 'my-app.prod', 'API-Gateway-Execution-Logs_abc123/prod', '/aws/rds/instance/db-1/postgresql', '/ecs/web#1', 'aws-waf-logs-edge']) {
      assert.ok(accepts('read-cloudwatch-logs', g), g);
    }
    for (const f of ['checkout-api', 'my_func-2', 'A'.repeat(64)]) assert.ok(accepts('deploy-lambda', f), f);
    for (const p of ['checkout-api/builds', 'a', 'v1.2/x_y', 'scratch']) assert.ok(accepts('s3-artifacts', p), p);
  });
  it('refuse wildcards, variables, empty values, .. and lone / segments', () => {
    for (const template of ['read-cloudwatch-logs', 'deploy-lambda', 's3-artifacts']) {
      for (const v of ['*', '?', 'a*', '${aws:username}', '$', '{', '}', '', '..', '/', 'a/../b', 'a//b', 'a/', '/aws/lambda/*']) {
        assert.ok(!accepts(template, v), `${template} refuses ${JSON.stringify(v)}`);
      }
    }
  });
});

describe('the vault section', () => {
  it('db-migrate is normalized: seconds, defaults, no AWS part', () => {
    const t = get('db-migrate');
    assert.equal(t.aws, undefined);
    assert.deepEqual(t.vault, {
      policies: ['db-migrate-read'], ttlSeconds: 1800, explicitMaxTtlSeconds: 4 * 3600, numUses: 0, tokenRole: undefined,
      metadata: { team: 'platform', purpose: 'schema-migrations' }, renewable: true, noDefaultPolicy: false,
    });
  });
  it('defaults: ttl min(1h, explicit max), explicit max = session.maxDuration', () => {
    const t = templateFrom('vault-defaults', `
name: vault-defaults
description: defaults
allowed: { groups: [developers] }
session: { maxDuration: 45m }
vault: { policies: [kv-read] }
`);
    assert.equal(t.vault?.ttlSeconds, 45 * 60);
    assert.equal(t.vault?.explicitMaxTtlSeconds, 45 * 60);
  });
  it('builds the exact token create request, capped by the time left in the session', () => {
    const t = get('db-migrate');
    const now = Date.UTC(2026, 10, 22, 12, 0, 0);
    const ctx = { developer: 'alice@example.com', sessionId: 'abcdefgh23', agent: 'claude-code', now };
    assert.deepEqual(buildVaultTokenRequest(t, { ...ctx, sessionExpiresAt: now + 4 * 3600_000 }, 'broker-tasks'), {
      role: 'broker-tasks',
      ttlSeconds: 1800,
      explicitMaxTtlSeconds: 14_400,
      body: {
        policies: ['db-migrate-read'],
        meta: { team: 'platform', purpose: 'schema-migrations', developer: 'alice@example.com', task: 'db-migrate', session: 'abcdefgh23', agent: 'claude-code' },
        ttl: '1800s', explicit_max_ttl: '14400s', num_uses: 0, renewable: true, display_name: 'broker-db-migrate-abcdefgh23', no_default_policy: false,
      },
    });
    const late = buildVaultTokenRequest(t, { ...ctx, sessionExpiresAt: now + 600_500 }, 'broker-tasks');
    assert.equal(late.explicitMaxTtlSeconds, 600, 'never beyond the end of the session');
    assert.equal(late.ttlSeconds, 600);
    brokerError(() => buildVaultTokenRequest(t, { ...ctx, sessionExpiresAt: now + 500 }, 'broker-tasks'), 'conflict');
    brokerError(() => buildVaultTokenRequest(get('deploy-lambda'), { ...ctx, sessionExpiresAt: now + 3600_000 }, 'r'), 'invalid_request');
  });
  it('display names use only the characters Vault keeps', () => {
    assert.equal(vaultDisplayName('db-migrate', 'abcdefgh23'), 'broker-db-migrate-abcdefgh23');
  });
});

describe('broken templates', () => {
  const { templates, problems } = loadTemplates(BROKEN_DIR);
  /** file → [field path, message, hint] that must be reported, and nothing else for that file. */
  const expected: Record<string, [string, RegExp, RegExp?][]> = {
    'yaml-syntax-error.yaml': [['', /^YAML syntax error at line 5, column 1: Flow sequence/]],
    'unknown-key.yaml': [
      ['session.credentialLifeTime', /unknown key "credentialLifeTime"/, /did you mean "credentialLifetime"\?/],
      ['aws.policy.Statement[0].Resources', /unknown key "Resources"/, /did you mean "Resource"\?/],
    ],
    'wrong-type.yaml': [
      ['allowed.groups', /expected a list, got a string/],
      ['parameters.function.maxLength', /expected a number, got a string/],
      ['aws.tags.build', /expected a string, got a number/, /quote it in YAML: "42"/],
    ],
    'duration-out-of-range.yaml': [
      ['session.maxDuration', /is 24h \(86400 s\); it must be between 15m \(900 s\) and 12h \(43200 s\)/],
      ['session.credentialLifetime', /is 5m \(300 s\)/],
    ],
    'lifetime-exceeds-max.yaml': [['session.credentialLifetime', /\(2h\) is longer than session.maxDuration \(1h\)/, /cannot outlive/]],
    'bad-tags.yaml': [
      ['aws.tags["aws:team"]', /aws: prefix, which AWS reserves/],
      ['aws.tags["Broker:Developer"]', /broker: prefix, reserved for the broker's own tags/],
      ['aws.tags["cost center!"]', /is not 1-128 chars of letters, digits, spaces and _.:\/=\+-@/],
      ['aws.tags.team', /repeats "Team": STS compares tag keys case-insensitively/],
      ['aws.tags.owner', /tag value for "owner"/],
      ['aws.transitiveTagKeys[1]', /"project" is not a session tag key/, /broker:developer/],
    ],
    'too-many-tags.yaml': [['aws.tags', /51 session tags \(4 set by the broker \+ 47 here\); STS allows 50/, /at most 46/]],
    'policy-too-large.yaml': [['aws.policy', /can reach \d{4} chars .*maximum-length parameters.*STS allows 2048/, /maxLength/]],
    'unknown-action.yaml': [
      ['aws.policy.Statement[1].Action[0]', /AWS Lambda has no action "UpdateFunctionCod"/, /did you mean "lambda:UpdateFunctionCode"\?/],
      ['aws.policy.Statement[1].Action[1]', /unknown AWS service prefix "lamda"/, /did you mean "lambda:GetFunction"\?/],
      ['aws.policy.Statement[1].Action[2]', /"s3:Frobnicate\*" matches no s3 action/],
      ['aws.policy.Statement[1].Action[3]', /is not an IAM action name/, /service:Action/],
    ],
    'broad-wildcard.yaml': [['aws.policy.Statement[1].Action', /allows every action on every resource/, /allowBroadWildcard: true/]],
    // The same breadth spelt otherwise: NotAction, NotResource, an ARN of wildcards.
    'broad-notaction.yaml': [
      ['aws.policy.Statement[0].NotAction', /allows every action on every resource \(NotAction: every action but those listed, on Resource "\*"\)/, /allowBroadWildcard: true/],
      ['aws.policy.Statement[1].Action', /allows every action on every resource$/, /allowBroadWildcard: true/],
    ],
    'broad-notresource.yaml': [
      ['aws.policy.Statement[0].Action', /allows every action on every resource \(Action "\*", NotResource: every resource but those listed\)/, /allowBroadWildcard: true/],
    ],
    'bad-resource-arns.yaml': [
      ['aws.policy.Statement[0].Resource[0]', /the account "12345" in "arn:aws:lambda:eu-west-1:12345:function:checkout-api" is not a 12-digit AWS account ID/, /arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE/],
      ['aws.policy.Statement[0].Resource[1]', /the service "Lambda" .* is not an AWS service namespace/],
      ['aws.policy.Statement[0].Resource[2]', /the region "EU_WEST_1" .* is not an AWS region/],
      ['aws.policy.Statement[0].Resource[3]', /the partition "amazon" .* is not an AWS partition/],
      ['aws.policy.Statement[0].Resource[4]', /the account "function" in "arn:aws:lambda:eu-west-1:function:checkout-api" is not a 12-digit AWS account ID/],
      ['aws.policy.Statement[0].Resource[5]', /"arn:aws:s3:::" names no resource after the account/],
      ['aws.policy.Statement[1].NotResource', /"arn:aws:lambda:eu-west-1:123456789012" is not an ARN/],
    ],
    'unknown-placeholder.yaml': [
      ['aws.policy.Statement[0].Resource[1]', /placeholder \$\{param\.fn\} names no declared parameter/, /declared parameters: function/],
      ['aws.policy.Statement[0].Resource[2]', /unknown placeholder \$\{foo\}/, /\$\{developer\}, \$\{session\} and \$\{param\.NAME\}/],
    ],
    'name-mismatch.yaml': [['name', /is "some-other-name" but the file is name-mismatch\.yaml/]],
    'bad-pattern.yaml': [
      ['parameters.function.pattern', /does not compile: .*Unterminated group/],
      ['parameters.escape.pattern', /does not compile/],
    ],
    'bad-arns.yaml': [
      ['aws.roleArn', /the account "12345" .* is not a 12-digit AWS account ID/],
      ['aws.managedPolicyArns', /lists 11 policies; STS allows at most 10/],
      ['aws.managedPolicyArns[10]', /"arn:aws:s3:::not-a-policy" is not an IAM managed policy ARN/],
    ],
    'policy-charset.yaml': [['aws.policy.Statement[0].Resource', /characters a session policy cannot hold: U\+2192/]],
    'bad-policy-grammar.yaml': [
      ['aws.policy.Version', /is "2008-10-17"/, /use "2012-10-17"/],
      ['aws.policy.Statement', /needs exactly one of Resource or NotResource/],
    ],
    'duplicate-name.yml': [['name', /"duplicate-name" is already defined in .*duplicate-name\.yaml/]],
    'nobody-allowed.yaml': [['allowed', /nobody may start this task/, /allowed\.groups/]],
    'missing-aws.yaml': [['aws', /is missing, and so is vault: this template grants nothing/, /vault section/]],
    'vault-bad-policies.yaml': [
      ['vault.policies[0]', /the root policy is never put on a task token/],
      ['vault.policies[1]', /"default" is added by Vault to every token/, /remove it/],
      ['vault.policies[2]', /"DB-Read" is not a Vault policy name/, /Vault lower-cases policy names: write "db-read"/],
      ['vault.policies[3]', /"kv-read,kv-write" is not a Vault policy name/, /Vault splits names on commas/],
      ['vault.policies[5]', /"kv-read" is listed twice/],
    ],
    'vault-ttl-too-long.yaml': [
      ['vault.ttl', /\(2h\) is longer than session\.maxDuration \(1h\)/, /cannot outlive its task session/],
      ['vault.explicitMaxTtl', /\(3h\) is longer than session\.maxDuration \(1h\)/],
    ],
    'vault-ttl-exceeds-max.yaml': [['vault.ttl', /\(1h\) is longer than vault\.explicitMaxTtl \(30m\)/]],
    'vault-bad-duration.yaml': [
      ['vault.ttl', /"ten minutes" is not a duration/],
      ['vault.numUses', /must be 0 \(unlimited\) or more/],
    ],
    'vault-bad-metadata.yaml': [
      ['vault.tokenRole', /"broker tasks" is not a Vault token role name/],
      ['vault.ttl', /is 30s \(30 s\); the broker needs at least 1m/],
      ['vault.metadata.developer', /"developer" is set by the broker on every token/],
      ['vault.metadata.Session', /"Session" is set by the broker/],
      ['vault.metadata["cost center!"]', /metadata key "cost center!" is not 1-128 chars/],
    ],
    'vault-credential-lifetime.yaml': [['session.credentialLifetime', /applies to AWS credentials, and this template grants none/, /vault\.ttl/]],
    // Patterns that let a value widen the grant (param-probes.ts): each names what it accepted.
    'unsafe-patterns.yaml': [
      ['parameters.anything.pattern', /^accepts "\*" \(an IAM wildcard\), "\$\{aws:x\}" \(IAM policy-variable syntax\), "" \(an empty value\), "\.\." \(a parent-directory segment\) and "\/" \(a lone \/\): a value could widen the grant$/, /tighten the pattern.*allowWildcards: true/],
      ['parameters.prefixed.pattern', /^accepts "build-\*" \(an IAM wildcard\), "build-\$" \(IAM policy-variable syntax\)/, /allowWildcards: true/],
      ['parameters.maybeEmpty.pattern', /^accepts "" \(an empty value\): a value could widen the grant$/, /^(?!.*allowWildcards).*never empty/],
      ['parameters.logGroup.pattern', /^accepts "\.\." \(a parent-directory segment\) and "\/" \(a lone \/\)/, /^(?!.*allowWildcards)/],
      ['parameters.braces.pattern', /^accepts "\$" \(IAM policy-variable syntax\)/, /allowWildcards: true/],
    ],
    'allow-wildcards-empty.yaml': [['parameters.function.pattern', /^accepts "" \(an empty value\), "\.\." \(a parent-directory segment\) and "\/" \(a lone \/\)/, /^(?!.*allowWildcards)/]],
    'vault-no-default-renewable.yaml': [['vault.noDefaultPolicy', /a token cannot renew itself \(auth\/token\/renew-self\)/, /set vault\.renewable: false.*or remove noDefaultPolicy/]],
  };

  for (const [file, wanted] of Object.entries(expected)) {
    it(`${file}: ${wanted.map(([path]) => path || '(file)').join(', ')}`, () => {
      const got = problems.filter((p) => p.file === join(BROKEN_DIR, file));
      assert.deepEqual(got.map((p) => p.path).sort(), wanted.map(([path]) => path).sort(), JSON.stringify(got, null, 2));
      for (const [path, message, hint] of wanted) {
        const p = got.find((x) => x.path === path)!;
        assert.match(p.message, message);
        if (hint) assert.match(p.hint ?? '', hint);
      }
    });
  }
  it('has one expectation per fixture file, and keeps no broken template', () => {
    const files = new Set(problems.map((p) => p.file.slice(BROKEN_DIR.length + 1)));
    assert.deepEqual([...files].sort(), Object.keys(expected).sort());
    assert.deepEqual([...templates.keys()], ['duplicate-name'], 'only the first of the duplicate pair loads');
  });
  it('loadTemplatesOrThrow refuses the whole set with every problem as a detail', () => {
    const e = brokerError(() => loadTemplatesOrThrow(BROKEN_DIR), 'invalid_template');
    assert.equal(e.details?.length, problems.length);
    assert.ok(e.details?.some((d) => d.path === `${join(BROKEN_DIR, 'unknown-action.yaml')}:aws.policy.Statement[1].Action[0]`));
  });
  it('accepts every breadth of wildcard when the template says it is meant (aws.allowBroadWildcard: true)', () => {
    const t = templateFrom('break-glass', `
name: break-glass
description: full access, on purpose
allowed: { groups: [admins] }
session: { maxDuration: 1h }
aws:
  roleArn: arn:aws:iam::123456789012:role/broker-break-glass
  region: eu-west-1
  allowBroadWildcard: true
  policy:
    Version: '2012-10-17'
    Statement:
      - { Effect: Allow, Action: '*', Resource: '*' }
      - { Effect: Allow, NotAction: 'iam:*', Resource: '*' }
      - { Effect: Allow, Action: '*', NotResource: 'arn:aws:s3:::payroll/*' }
      - { Effect: Allow, NotAction: 'iam:*', NotResource: 'arn:aws:s3:::payroll/*' }
`);
    assert.ok(t, 'loads');
    assert.equal(t.aws?.allowBroadWildcard, true);
  });
  it('allowWildcards: true lets a pattern accept wildcards and ${, on purpose', () => {
    const t = templateFrom('wide-on-purpose', `
name: wide-on-purpose
description: developers pick functions by wildcard, on purpose
allowed: { groups: [admins] }
session: { maxDuration: 1h }
parameters:
  function: { pattern: '[A-Za-z0-9_*?-]+', maxLength: 64, allowWildcards: true }
aws:
  roleArn: arn:aws:iam::123456789012:role/broker-wide
  region: eu-west-1
  policy:
    Version: '2012-10-17'
    Statement: { Effect: Allow, Action: lambda:GetFunction, Resource: 'arn:aws:lambda:eu-west-1:123456789012:function:\${param.function}' }
`);
    assert.equal(t.parameters[0]?.allowWildcards, true);
    assert.deepEqual(validateParams(t, { function: 'checkout-*' }), { function: 'checkout-*' });
    assert.equal(get('deploy-lambda').parameters[0]?.allowWildcards, false, 'off unless written');
  });
  it('probes a pattern through the request pipeline: length, then charset, then pattern', () => {
    const at = (pattern: string, maxLength: number) => loadTemplates(dirWith('probe-pipeline', `
name: probe-pipeline
description: probes
allowed: { groups: [developers] }
session: { maxDuration: 1h }
parameters:
  x: { pattern: '${pattern}', maxLength: ${maxLength} }
aws:
  roleArn: arn:aws:iam::123456789012:role/broker-probe
  region: eu-west-1
  policy:
    Version: '2012-10-17'
    Statement: { Effect: Allow, Action: lambda:GetFunction, Resource: 'arn:aws:lambda:eu-west-1:123456789012:function:\${param.x}' }
`)).problems.map((p) => p.message);
    // The shortest value with a * is "aaa*": 4 chars, which maxLength 3 refuses before the pattern runs.
    assert.deepEqual(at('[a-z]{3}\\*?', 3), []);
    assert.match(at('[a-z]{3}\\*?', 4)[0] ?? '', /^accepts "aaa\*" \(an IAM wildcard\)/);
    // The only value with a * also holds U+2192, which the Policy charset refuses.
    assert.deepEqual(at('\u2192\\*|[a-z]+', 8), []);
  });
  it('reports a missing directory instead of throwing', () => {
    const r = loadTemplates(join(BROKEN_DIR, 'nope'));
    assert.equal(r.problems[0]?.message, 'no such directory');
  });
});

describe('rendering', () => {
  const ctx = { developer: 'alice@example.com', sessionId: 'abcdefgh23', agent: 'claude-code', params: { function: 'checkout-api' } };

  it('builds the exact AssumeRole request for deploy-lambda', () => {
    const req = buildAssumeRoleRequest(get('deploy-lambda'), ctx, 3600);
    const fn = 'arn:aws:lambda:eu-west-1:123456789012:function:checkout-api';
    assert.deepEqual(req, {
      RoleArn: 'arn:aws:iam::123456789012:role/broker-deploy-lambda',
      RoleSessionName: 'alice@example.com.deploy-lambda.abcdefgh23',
      SourceIdentity: 'alice@example.com',
      Tags: [
        { Key: 'broker:developer', Value: 'alice@example.com' },
        { Key: 'broker:task', Value: 'deploy-lambda' },
        { Key: 'broker:session', Value: 'abcdefgh23' },
        { Key: 'broker:agent', Value: 'claude-code' },
        { Key: 'team', Value: 'platform' },
        { Key: 'cost-center', Value: 'cc-1234' },
      ],
      TransitiveTagKeys: ['broker:developer', 'broker:session'],
      Policy: JSON.stringify({
        Version: '2012-10-17',
        Statement: [
          {
            Sid: 'DeployOneFunction',
            Effect: 'Allow',
            Action: ['lambda:GetFunction', 'lambda:GetFunctionConfiguration', 'lambda:UpdateFunctionCode', 'lambda:UpdateFunctionConfiguration',
              'lambda:PublishVersion', 'lambda:ListVersionsByFunction', 'lambda:GetAlias', 'lambda:UpdateAlias'],
            Resource: [fn, `${fn}:*`],
          },
          {
            Sid: 'ReadItsLogs',
            Effect: 'Allow',
            Action: ['logs:FilterLogEvents', 'logs:GetLogEvents', 'logs:DescribeLogStreams'],
            Resource: ['arn:aws:logs:eu-west-1:123456789012:log-group:/aws/lambda/checkout-api', 'arn:aws:logs:eu-west-1:123456789012:log-group:/aws/lambda/checkout-api:*'],
          },
        ],
      }),
      DurationSeconds: 3600,
    });
  });

  it('substitutes ${developer} and ${session}, and leaves IAM policy variables alone', () => {
    const t = templateFrom('vars', `
name: vars
description: placeholders and IAM variables
allowed: { groups: [developers] }
session: { maxDuration: 1h }
aws:
  roleArn: arn:aws:iam::123456789012:role/broker-vars
  region: eu-west-1
  policy:
    Version: '2012-10-17'
    Statement:
      Effect: Allow
      Action: s3:PutObject
      Resource: arn:aws:s3:::bucket/\${developer}/\${session}/\${aws:username}/*
`);
    const policy = JSON.parse(buildAssumeRoleRequest(t, { ...ctx, params: {} }, 900).Policy);
    assert.equal(policy.Statement.Resource, 'arn:aws:s3:::bucket/alice@example.com/abcdefgh23/${aws:username}/*');
  });

  it('the s3-artifacts scratch area is per developer and session; the prefix lives under artifacts/', () => {
    const req = buildAssumeRoleRequest(get('s3-artifacts'), { ...ctx, params: { prefix: 'checkout-api/builds' } }, 900);
    assert.ok(req.Policy.includes('"arn:aws:s3:::acme-build-artifacts/scratch/alice@example.com/abcdefgh23/*"'), req.Policy);
    assert.ok(req.Policy.includes('"arn:aws:s3:::acme-build-artifacts/artifacts/checkout-api/builds/*"'), req.Policy);
    // What this grants and denies, evaluated: test/template-scope.test.ts.
  });

  it('a value with a quote fails the pattern: it cannot break out of its string', () => {
    const e = brokerError(() => buildAssumeRoleRequest(get('deploy-lambda'), { ...ctx, params: { function: 'x"}],"Resource":"*' } }, 3600), 'invalid_request');
    assert.deepEqual(e.details?.map((d) => d.path), ['/params/function']);
    assert.match(e.details![0]!.message, /does not match the pattern/);
  });

  // allowWildcards lets * and ${ through (not an empty value, a .. segment or a lone /).
  const permissive = () => templateFrom('permissive', `
name: permissive
description: a deliberately permissive pattern
allowed: { groups: [developers] }
session: { maxDuration: 1h }
parameters:
  anything: { pattern: '[^/.]+', maxLength: 256, allowWildcards: true }
aws:
  roleArn: arn:aws:iam::123456789012:role/broker-permissive
  region: eu-west-1
  policy:
    Version: '2012-10-17'
    Statement:
      - Effect: Allow
        Action: lambda:GetFunction
        Resource: [${Array.from({ length: 6 }, () => "'arn:aws:lambda:eu-west-1:123456789012:function:${param.anything}'").join(', ')}]
`);

  it('even a permissive pattern yields valid JSON with the value as one string', () => {
    const hostile = 'x"}],"Action":"*","Resource":"*","x":"\\${developer}';
    const req = buildAssumeRoleRequest(permissive(), { ...ctx, params: { anything: hostile } }, 900);
    const policy = JSON.parse(req.Policy);
    assert.equal(policy.Statement.length, 1);
    assert.equal(policy.Statement[0].Action, 'lambda:GetFunction');
    assert.equal(policy.Statement[0].Resource[0], `arn:aws:lambda:eu-west-1:123456789012:function:${hostile}`, 'verbatim, ${…} in a value not expanded');
  });

  it('refuses characters outside the Policy charset whatever the pattern', () => {
    const e = brokerError(() => validateParams(permissive(), { anything: 'caf\u00e9\u2192' }), 'invalid_request');
    assert.match(e.details![0]!.message, /characters a session policy cannot hold/);
    assert.deepEqual(validateParams(permissive(), { anything: 'caf\u00e9' }), { anything: 'caf\u00e9' }, 'U+00E9 is in the charset');
  });

  it('re-checks the rendered size: JSON escaping can grow past 2,048 chars', () => {
    // 6 × 256 'x' fits at load; 6 × 256 '"' doubles when JSON-escaped.
    const e = brokerError(() => buildAssumeRoleRequest(permissive(), { ...ctx, params: { anything: '"'.repeat(256) } }, 900), 'invalid_request');
    assert.match(e.message, /would be \d+ chars with these parameters; STS allows 2048/);
  });

  it('validateParams reports every problem by JSON pointer', () => {
    const t = get('deploy-lambda');
    const e = brokerError(() => validateParams(t, { fn: 'a', 'a/b~c': 'x' }), 'invalid_request');
    assert.deepEqual(e.details?.map((d) => d.path), ['/params/fn', '/params/a~1b~0c', '/params/function']);
    assert.match(e.details![0]!.message, /unknown parameter "fn"/);
    assert.match(e.details![0]!.hint!, /deploy-lambda takes: function/);
    assert.match(e.details![2]!.message, /missing required parameter/);
    const long = brokerError(() => validateParams(t, { function: 'a'.repeat(65) }), 'invalid_request');
    assert.match(long.details![0]!.message, /is 65 chars; at most 64 allowed/);
    assert.deepEqual(validateParams(t, { function: 'checkout-api' }), { function: 'checkout-api' });
    brokerError(() => validateParams(t, { function: 'toString', constructor: 'x' } as Record<string, string>), 'invalid_request');
  });

  it('refuses an identity that cannot be a SourceIdentity, and an agent outside the tag charset', () => {
    const t = get('deploy-lambda');
    for (const developer of ['aws:alice', 'a', 'x'.repeat(65), 'alice,bob@example.com', 'alice smith@example.com']) {
      const e = brokerError(() => buildAssumeRoleRequest(t, { ...ctx, developer }, 3600), 'forbidden');
      assert.match(e.message, /cannot be an AWS SourceIdentity/);
    }
    const e = brokerError(() => buildAssumeRoleRequest(t, { ...ctx, agent: 'evil;rm -rf' }, 3600), 'invalid_request');
    assert.deepEqual(e.details?.map((d) => d.path), ['/agent']);
  });

  it('clamps DurationSeconds to 900..43200', () => {
    const t = get('deploy-lambda');
    assert.equal(buildAssumeRoleRequest(t, ctx, 60).DurationSeconds, 900);
    assert.equal(buildAssumeRoleRequest(t, ctx, 100_000).DurationSeconds, 43_200);
    assert.equal(buildAssumeRoleRequest(t, ctx, 1800.7).DurationSeconds, 1800);
  });
});

describe('roleSessionName and session ids', () => {
  it('reads developer.task.session', () => {
    assert.equal(roleSessionName('alice@example.com', 'deploy-lambda', 'abcdefgh23'), 'alice@example.com.deploy-lambda.abcdefgh23');
  });
  it('fits 64 chars of [\\w+=,.@-] for long and odd identities, keeping the session id whole', () => {
    const id = newSessionId();
    const task = 'a-forty-character-task-name-for-testing1';
    for (const developer of [`${'very.long.name'.repeat(8)}@example.com`, 'Jöhn Dœ/ä@exämple.com', 'x', '🙂'.repeat(40)]) {
      for (const t of ['deploy-lambda', task]) {
        const name = roleSessionName(developer, t, id);
        assert.match(name, SESSION_NAME_RE, name);
        assert.ok(name.endsWith(`.${t}.${id}`), name);
      }
    }
    assert.equal(roleSessionName('x'.repeat(100), task, id).length, 64);
    assert.equal(roleSessionName('', 'deploy-lambda', id), `deploy-lambda.${id}`);
    assert.equal(roleSessionName('Jöhn Dœ@example.com', 'deploy-lambda', id), `J-hn-D-@example.com.deploy-lambda.${id}`);
  });
  it('session ids are 10 random base32 chars', () => {
    const ids = new Set(Array.from({ length: 200 }, newSessionId));
    assert.equal(ids.size, 200);
    for (const id of ids) assert.match(id, SESSION_ID_RE);
    assert.match('alice@example.com', SOURCE_IDENTITY_RE);
  });
});

describe('isAllowed', () => {
  it('by group (exact) or by email (case-insensitive)', () => {
    const lambda = get('deploy-lambda');
    assert.equal(isAllowed(lambda, { email: 'alice@example.com', groups: ['developers'] }), true);
    assert.equal(isAllowed(lambda, { email: 'bob@example.com', groups: ['contractors'] }), false);
    assert.equal(isAllowed(lambda, { email: 'bob@example.com', groups: ['Developers'] }), false);
    const s3 = get('s3-artifacts');
    assert.equal(isAllowed(s3, { email: 'Release-Bot@Example.com', groups: [] }), true);
    assert.equal(isAllowed(s3, { email: '', groups: [] }), false);
  });
});

describe('broker policy (compiled CLI)', () => {
  const explainArgs = ['policy', 'explain', 'deploy-lambda', '--dir', POLICIES_DIR, '--param', 'function=checkout-api'];

  it('validate exits 0 on the shipped templates', async () => {
    const r = await broker(['policy', 'validate', POLICIES_DIR], {});
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    assert.match(r.stdout, /4 template\(s\) valid: db-migrate, deploy-lambda, read-cloudwatch-logs, s3-artifacts/);
  });
  it('validate exits 1 and prints file:path: message (hint) per problem', async () => {
    const r = await broker(['policy', 'validate', BROKEN_DIR], {});
    assert.equal(r.code, EXIT_NO, 'problems found are the answer (1), not a failure of the command');
    assert.equal(r.stderr, '', 'the problems are the result: stdout');
    assert.ok(r.stdout.includes(`${join(BROKEN_DIR, 'unknown-action.yaml')}:aws.policy.Statement[1].Action[0]: AWS Lambda has no action "UpdateFunctionCod" (did you mean "lambda:UpdateFunctionCode"?)`), r.stdout);
    assert.ok(r.stdout.includes(`${join(BROKEN_DIR, 'vault-bad-policies.yaml')}:vault.policies[0]: the root policy is never put on a task token`), r.stdout);
    assert.ok(r.stdout.includes(`${join(BROKEN_DIR, 'vault-ttl-too-long.yaml')}:vault.explicitMaxTtl: (3h) is longer than session.maxDuration (1h)`), r.stdout);
    assert.match(r.stdout, /\d+ problem\(s\) in 31 file\(s\)/);
    assert.ok(!/at .*\.js:\d+/.test(r.stdout), 'no stack trace');
    const json = await broker(['policy', 'validate', BROKEN_DIR, '--json'], {});
    assert.equal(json.code, EXIT_NO);
    const out = JSON.parse(json.stdout);
    assert.equal(out.ok, false);
    assert.deepEqual(out.templates, ['duplicate-name']);
    assert.ok(out.problems.some((p: { path: string }) => p.path === 'aws.tags.team'));
  });

  it('explain prints the request, the rendered policy and the access decision', async () => {
    const r = await broker([...explainArgs, '--as', 'alice@example.com', '--groups', 'developers', '--agent', 'aider', '--ttl', '30m'], {});
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /Access: alice@example\.com \(groups: developers\) MAY start this task/);
    assert.match(r.stdout, /RoleArn: +arn:aws:iam::123456789012:role\/broker-deploy-lambda/);
    assert.match(r.stdout, /RoleSessionName: +alice@example\.com\.deploy-lambda\.[a-z2-7]{10}\n/);
    assert.match(r.stdout, /SourceIdentity: +alice@example\.com\n/);
    assert.match(r.stdout, /DurationSeconds: +1800 \(30m\)/);
    assert.match(r.stdout, /broker:agent = aider/);
    assert.match(r.stdout, /Region: +eu-west-1/);
    assert.match(r.stdout, /\n {12}"arn:aws:lambda:eu-west-1:123456789012:function:checkout-api",\n/, 'pretty-printed policy');
  });
  it('explain shows who confirms a start: mode, approvers and approvals, maxAge, timeout, break-glass', async () => {
    const explain = async (dir: string, name: string, param: string, json = false) => {
      const r = await broker(['policy', 'explain', name, '--dir', dir, '--as', 'alice@example.com', '--groups', 'developers', '--param', param, ...(json ? ['--json'] : [])], {});
      assert.equal(r.code, 0, r.stderr);
      return r.stdout;
    };
    const dir = mkdtempSync(join(tmpdir(), 'explain-confirm-'));
    try {
      copyFileSync(join(POLICIES_DIR, 'read-cloudwatch-logs.yaml'), join(dir, 'read-cloudwatch-logs.yaml'));
      const deploy = readFileSync(join(POLICIES_DIR, 'deploy-lambda.yaml'), 'utf8');
      writeFileSync(join(dir, 'deploy-lambda.yaml'), deploy);
      writeFileSync(join(dir, 'two-person.yaml'), `${deploy.replace(/^name: .*$/m, 'name: two-person')}
confirm:
  mode: approvers
  approvers: { groups: [admins], emails: [lead@example.com] }
  approvals: 2
  maxAge: 0
  timeout: 1h
  breakGlass: true
`);
      assert.match(await explain(dir, 'two-person', 'function=f'), new RegExp([
        "Confirm: approvers: the requester's fresh IdP login and 2 approvals by group admins, lead@example\\.com \\(never the requester\\)",
        '  IdP login: a new login for the decision, made after the request; a request expires after 1h',
        '  break-glass: allowed \\(--break-glass --reason',
      ].join('\n')));
      assert.deepEqual(JSON.parse(await explain(dir, 'two-person', 'function=f', true)).confirm, {
        mode: 'approvers', maxAgeSeconds: 0, timeoutSeconds: 3600, approvers: { groups: ['admins'], emails: ['lead@example.com'] }, approvals: 2, breakGlass: true,
      });
      assert.match(await explain(dir, 'deploy-lambda', 'function=f'),
        /Confirm: service default: .*\n {2}IdP login: at most the service's confirm\.maxAge old \(default 5m\), made after the request; a request expires after the service's confirm\.timeout \(default 15m\)\n {2}break-glass: not allowed\n/);
      assert.match(await explain(dir, 'read-cloudwatch-logs', 'logGroup=/aws/lambda/x'), /Confirm: none: starts at once/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  it('explain --json is the same request the service builds', async () => {
    const r = await broker([...explainArgs, '--as', 'bob@example.com', '--groups', 'contractors', '--json'], {});
    assert.equal(r.code, 0, r.stderr);
    const x = JSON.parse(r.stdout);
    assert.equal(x.allowed, false, 'explains, does not refuse');
    assert.deepEqual(x.allowedBy, { groups: ['developers'], emails: [] });
    assert.match(x.sampleSessionId, SESSION_ID_RE);
    const expected = buildAssumeRoleRequest(get('deploy-lambda'),
      { developer: 'bob@example.com', sessionId: x.sampleSessionId, agent: 'unspecified', params: { function: 'checkout-api' } }, 3600);
    assert.deepEqual(x.request, expected);
    assert.equal(x.region, 'eu-west-1');
    assert.equal(x.policyChars, expected.Policy.length);
  });
  it('explain shows the Vault token request of a Vault template', async () => {
    const r = await broker(['policy', 'explain', 'db-migrate', '--dir', POLICIES_DIR, '--as', 'alice@example.com', '--groups', 'developers', '--ttl', '1h', '--json'], {});
    assert.equal(r.code, 0, r.stderr);
    const x = JSON.parse(r.stdout);
    assert.equal(x.request, undefined, 'no AWS request');
    assert.equal(x.vaultRequest.body.explicit_max_ttl, '3600s', 'capped by the requested session length');
    assert.equal(x.vaultRequest.body.meta.session, x.sampleSessionId);
    const text = await broker(['policy', 'explain', 'db-migrate', '--dir', POLICIES_DIR, '--as', 'alice@example.com'], {});
    assert.match(text.stdout, /POST auth\/token\/create\/<vault\.tokenRole of the service>/);
    assert.match(text.stdout, /policies: +db-migrate-read \(\+ default, added by Vault\)/);
  });
  it('explain fails clearly on a bad parameter or an unknown template', async () => {
    const bad = await broker([...explainArgs.slice(0, -1), 'function=a b', '--as', 'alice@example.com'], {});
    assert.equal(bad.code, EXIT_CODES.invalid_request);
    assert.match(bad.stderr, /--param function: does not match the pattern/);
    const unknown = await broker(['policy', 'explain', 'nope', '--dir', POLICIES_DIR, '--as', 'alice@example.com'], {});
    assert.equal(unknown.code, EXIT_CODES.not_found);
    assert.match(unknown.stderr, /no task template "nope".*\n.*valid templates there: db-migrate, deploy-lambda, read-cloudwatch-logs, s3-artifacts/);
    const broken = await broker(['policy', 'explain', 'bad-arns', '--dir', BROKEN_DIR, '--as', 'alice@example.com'], {});
    assert.equal(broken.code, EXIT_CODES.invalid_template);
    assert.match(broken.stderr, /task template "bad-arns" has 3 problem\(s\)/);
    // With --json the error is the document on stdout, the exit status the same.
    const json = await broker(['policy', 'explain', 'nope', '--dir', POLICIES_DIR, '--as', 'alice@example.com', '--json'], {});
    assert.equal(json.code, EXIT_CODES.not_found);
    const { error } = JSON.parse(json.stdout) as { error: { code: string; message: string; hint: string } };
    assert.deepEqual(error, { code: 'not_found', message: `no task template "nope" in ${POLICIES_DIR}`, hint: 'valid templates there: db-migrate, deploy-lambda, read-cloudwatch-logs, s3-artifacts' });
    assert.match(json.stderr, /^broker: no task template "nope"/, 'the person still gets the report on stderr');
    const usage = await broker(['policy', 'explain', 'deploy-lambda', '--dir', POLICIES_DIR, '--json'], {});
    assert.equal(usage.code, EXIT_CODES.invalid_request, 'commander\'s own usage errors too');
    assert.deepEqual(JSON.parse(usage.stdout), { error: { code: 'invalid_request', message: "required option '--as <email>' not specified", hint: 'see: broker policy explain --help' } });
  });
});

describe('the confirm section', () => {
  const base = (confirm: string) => `name: c
description: confirm rules
allowed: { groups: [developers] }
session: { maxDuration: 1h }
aws:
  roleArn: arn:aws:iam::123456789012:role/r
  region: eu-west-1
  policy: { Version: '2012-10-17', Statement: [{ Effect: Allow, Action: 's3:GetObject', Resource: 'arn:aws:s3:::b/*' }] }
${confirm}`;
  const problemsOf = (confirm: string) => loadTemplates(dirWith('c', base(confirm))).problems.map((p) => [p.path, p.message]);

  it('shipped: read-cloudwatch-logs needs nobody, db-migrate an admin, the others the service default', () => {
    assert.equal(get('read-cloudwatch-logs').confirm.mode, 'none');
    assert.deepEqual(get('db-migrate').confirm, { mode: 'approvers', maxAgeSeconds: 300, timeoutSeconds: undefined, approvers: { groups: ['admins'], emails: [] }, approvals: 1, breakGlass: false });
    assert.equal(get('deploy-lambda').confirm.mode, undefined);
    assert.equal(get('s3-artifacts').confirm.mode, undefined);
  });
  it('is normalized: durations in seconds, emails lower-cased', () => {
    const t = templateFrom('c', base('confirm: { mode: approvers, maxAge: 0, timeout: 30m, approvers: { emails: [Lead@Example.com] }, approvals: 2, breakGlass: true }'));
    assert.deepEqual(t.confirm, { mode: 'approvers', maxAgeSeconds: 0, timeoutSeconds: 1800, approvers: { groups: [], emails: ['lead@example.com'] }, approvals: 2, breakGlass: true });
  });
  it('refuses approvers mode without approvers, approvals < 1, and approvers, approvals or breakGlass outside approvers mode', () => {
    assert.deepEqual(problemsOf('confirm: { mode: approvers }'), [['confirm.approvers', 'is required for mode approvers: nobody could approve']]);
    assert.match(String(problemsOf('confirm: { mode: approvers, approvers: { groups: [sre] }, approvals: 0 }')[0]), /confirm.approvals,is 0; it must be at least 1/);
    assert.match(String(problemsOf('confirm: { mode: self, breakGlass: true }')[0]), /confirm.breakGlass,applies to mode approvers only/);
    assert.match(String(problemsOf('confirm: { mode: self, approvers: { groups: [sre] } }')[0]), /confirm.approvers,applies to mode approvers only/);
    assert.match(String(problemsOf('confirm: { mode: self, approvals: 2 }')[0]), /confirm.approvals,applies to mode approvers only/);
    assert.match(String(problemsOf('confirm: { mode: sometimes }')[0]), /confirm.mode/);
    assert.match(String(problemsOf('confirm: { mode: self, timeout: 10s }')[0]), /confirm.timeout,is 10s; it must be between 1m and 7d/);
    assert.match(String(problemsOf('confirm: { mode: self, maxAge: 2d }')[0]), /confirm.maxAge/);
  });
});
