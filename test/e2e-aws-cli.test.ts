/**
 * The product's main path on real peers: a developer logs in through the IdP's device flow (the
 * provider's pages driven over HTTP), starts a deploy-lambda task, writes AWS CLI profiles, and the
 * real AWS CLI gets the task's assumed-role identity from moto through credential_process. Then the
 * CLI's other paths, run compiled as users run them, on a machine with its own keychain: login with
 * an ID token file, whoami, templates, logout, the CI guard, end --all.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EXIT_CODES } from '../broker/errors.js';
import { startBrokerService, type BrokerService } from './peers/broker-service.js';
import { broker, deviceLogin, makeTestHome, run, type TestHome } from './peers/cli.js';
import { startIdp } from './peers/idp.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { createRole, startMoto } from './peers/moto.js';
import { VENV_BIN } from './peers/paths.js';
import { assumeRoleCalls, startRecordingProxy } from './peers/recording-proxy.js';
import { filesContaining, filesWithTokensFrom } from './peers/secret-scan.js';

const TRUST = (principal: string) => JSON.stringify({
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { AWS: principal }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
});

// One set of peers for the file: moto behind a recording proxy, the IdP, the service.
let moto: Awaited<ReturnType<typeof startMoto>>;
let proxy: Awaited<ReturnType<typeof startRecordingProxy>>;
let idp: Awaited<ReturnType<typeof startIdp>>;
let svc: BrokerService;

before(async () => {
  moto = await startMoto();
  proxy = await startRecordingProxy(moto.url);
  idp = await startIdp();
  await createRole(moto.url, 'broker-deploy-lambda', TRUST('arn:aws:iam::123456789012:root'), 43200);
  svc = await startBrokerService({ issuer: idp.issuer, stsEndpoint: proxy.url, iamEndpoint: moto.url });
});
after(async () => {
  await svc?.stop();
  await idp?.stop();
  await proxy?.stop();
  await moto?.stop();
});

describe('end to end: device-flow login → task → configure aws → aws sts get-caller-identity', () => {
  let machine: TestHome;
  let home: string;
  let env: Record<string, string>;

  before(() => {
    machine = makeTestHome();
    ({ home, env } = machine);
  });
  after(async () => {
    await machine?.stop();
  });

  it('issues a session-tagged, policy-scoped credential that the AWS CLI uses', async () => {
    // 1. broker login: device flow; approve the printed user code on the IdP's own pages.
    const login = await deviceLogin(svc.url, env, idp, 'alice@example.com');
    assert.equal(login.code, 0, login.stderr);
    // The result on stdout; the prompt (URL and code) for the person on stderr.
    assert.match(login.stdout, /^Logged in to .* as alice@example\.com/);
    assert.match(login.stderr, /To log in, open /);
    assert.doesNotMatch(login.stderr, /Logged in/);

    // 2. broker task deploy-lambda
    const task = await broker(['task', 'deploy-lambda', '--param', 'function=checkout-api', '--reason', 'fix timeout', '--agent', 'claude-code', '--json'], env);
    assert.equal(task.code, 0, task.stderr);
    const started = JSON.parse(task.stdout) as { session: { id: string; roleSessionName: string }; accessKeyId: string };
    assert.ok(!task.stdout.includes('SecretAccessKey'), 'task --json must not print secrets');

    // 3. broker configure aws, into the temp HOME's ~/.aws/config
    const conf = await broker(['configure', 'aws'], env);
    assert.equal(conf.code, 0, conf.stderr);
    assert.match(conf.stdout, /^added profile broker-deploy-lambda$/m);
    assert.equal(conf.stderr, '', 'what it did is its result: stdout');
    const awsConfig = readFileSync(env.AWS_CONFIG_FILE!, 'utf8');
    assert.match(awsConfig, /\[profile broker-deploy-lambda\]/);
    assert.match(awsConfig, /credential_process = .*credential-process --task deploy-lambda/);
    assert.ok(!awsConfig.includes('broker-db-migrate'), 'no AWS profile for a template that grants only a Vault token');

    // 4. the real AWS CLI resolves credentials through credential_process
    const aws = await run(join(VENV_BIN, 'aws'), ['sts', 'get-caller-identity', '--profile', 'broker-deploy-lambda', '--endpoint-url', moto.url, '--output', 'json'],
      { env: { ...process.env, ...env } });
    assert.equal(aws.code, 0, aws.stderr);
    const identity = JSON.parse(aws.stdout) as { Arn: string };
    assert.equal(identity.Arn, `arn:aws:sts::123456789012:assumed-role/broker-deploy-lambda/${started.session.roleSessionName}`);

    // 5. what went to STS on the wire: tags, SourceIdentity, policy, duration
    const calls = assumeRoleCalls(proxy.requests);
    // The daemon got credentials when the task started and answers credential_process from memory.
    assert.equal(calls.length, 1, 'one AssumeRole: the task start; the AWS CLI was served from the daemon\'s memory');
    for (const call of calls) {
      assert.equal(call.RoleArn, 'arn:aws:iam::123456789012:role/broker-deploy-lambda');
      assert.equal(call.RoleSessionName, started.session.roleSessionName);
      assert.equal(call.SourceIdentity, 'alice@example.com');
      const tags = Object.fromEntries(Object.entries(call).filter(([k]) => /^Tags\.member\.\d+\.Key$/.test(k))
        .map(([k, v]) => [v, call[k.replace(/Key$/, 'Value')]]));
      assert.equal(tags['broker:developer'], 'alice@example.com');
      assert.equal(tags['broker:task'], 'deploy-lambda');
      assert.equal(tags['broker:session'], started.session.id);
      assert.equal(tags['broker:agent'], 'claude-code');
      const policy = JSON.parse(call.Policy!) as { Statement: { Resource: string | string[] }[] };
      const resources = policy.Statement.flatMap((s) => [s.Resource].flat());
      assert.ok(resources.some((r) => r.endsWith(':function:checkout-api')), `policy scoped to the function: ${call.Policy}`);
      assert.ok(!call.Policy!.includes('${'), 'no placeholder left unrendered');
      // min(requested: none, so the template's maxDuration 8h; maxDuration 8h; credentialLifetime 1h):
      // the credential lifetime wins.
      assert.equal(Number(call.DurationSeconds), 3600);
    }
    // and what moto stored
    const data = JSON.stringify(await moto.data());
    assert.ok(data.includes(started.session.roleSessionName), 'moto recorded the assumed-role session');

    // 6. status lists it; end stops re-issue
    const status = await broker(['status', '--json'], env);
    assert.equal(status.code, 0, status.stderr);
    assert.deepEqual((JSON.parse(status.stdout) as { sessions: { id: string }[] }).sessions.map((s) => s.id), [started.session.id]);

    const cp = await broker(['credential-process', '--task', 'deploy-lambda'], env);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(cp.stderr, '');
    const creds = JSON.parse(cp.stdout) as Record<string, unknown>;
    assert.equal(creds.Version, 1);
    assert.match(String(creds.Expiration), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);

    const end = await broker(['end', 'deploy-lambda'], env);
    assert.equal(end.code, 0, end.stderr);
    assert.equal(end.stdout, `Ended deploy-lambda (${started.session.id})\n`);
    assert.equal(end.stderr, '');
    const after = await broker(['credential-process', '--task', 'deploy-lambda'], env);
    assert.equal(after.code, EXIT_CODES.not_found);
    assert.equal(after.stdout, '', 'nothing on stdout on failure');
    assert.match(after.stderr, /no active "deploy-lambda" task session/);
    assert.equal(after.stderr.trim().split('\n').length, 1, 'one line on stderr');
    const awsAfter = await run(join(VENV_BIN, 'aws'), ['sts', 'get-caller-identity', '--profile', 'broker-deploy-lambda', '--endpoint-url', moto.url],
      { env: { ...process.env, ...env } });
    assert.notEqual(awsAfter.code, 0);

    // 7. no secret on disk or in the service log: not in the temp HOME, the service dir (SQLite, log) or /tmp
    const secrets = [String(creds.SecretAccessKey), String(creds.SessionToken)];
    assert.deepEqual(filesContaining([home, svc.dir, tmpdir()], secrets), []);
    assert.deepEqual(filesWithTokensFrom([home, svc.dir, tmpdir()], svc.url), [], 'no token the broker signed');
    assert.ok(svc.log().includes(String(creds.AccessKeyId)), 'the AccessKeyId is logged (it is what ties CloudTrail to the session)');
  });
});

describe('the CLI\'s other paths (compiled, with its own keychain)', () => {
  let machine: TestHome;
  let keyring: TestKeyring;
  let env: Record<string, string>;
  const account = () => `login:${svc.url}`;
  const cli = (args: string[], extra: Record<string, string> = {}, opts: { input?: string } = {}) => broker(args, { ...env, ...extra }, opts);

  before(async () => {
    keyring = await startKeyring();
    machine = makeTestHome('broker-cli-');
    env = { ...machine.env, ...keyring.env };
  });
  after(async () => {
    await machine?.stop();
    await keyring?.stop();
  });

  it('broker login --id-token-file: a real IdP-issued ID token, no device flow', async () => {
    // An ID token as a CI system would hold one: from a complete login at the IdP.
    const file = join(machine.home, 'id-token.jwt');
    writeFileSync(file, `${await idp.loginAs('carol@example.com')}\n`, { mode: 0o600 });
    const r = await cli(['login', '--server', svc.url, '--id-token-file', file]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, 'login kept in the OS keychain (Secret Service)\n', 'which store, for the person, on stderr');
    assert.match(r.stdout, new RegExp(`^Logged in to ${svc.url.replace(/\./g, '\\.')} as carol@example\\.com \\(groups: developers, admins\\)\\n$`));
    assert.doesNotMatch(r.stderr, /To log in, open/, 'no device flow');
    const stored = JSON.parse(keyring.read(account())!) as { developer: string; refreshToken: string };
    assert.equal(stored.developer, 'carol@example.com');
    // And from stdin (`-`), with --json on stdout.
    const piped = await cli(['login', '--id-token-file', '-', '--json'], {}, { input: await idp.loginAs('carol@example.com') });
    assert.equal(piped.code, 0, piped.stderr);
    assert.deepEqual(JSON.parse(piped.stdout), {
      developer: 'carol@example.com', groups: ['developers', 'admins'], server: svc.url, loginStore: { kind: 'secret-service', label: 'OS keychain (Secret Service)' },
    });
  });

  it('broker whoami, and --json (the same object)', async () => {
    const r = await cli(['whoami']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `carol@example.com (groups: developers, admins) at ${svc.url}\n`);
    assert.match(r.stderr, /^login kept in the OS keychain \(Secret Service\)$/m);
    const j = await cli(['whoami', '--json']);
    assert.equal(j.code, 0, j.stderr);
    assert.deepEqual(JSON.parse(j.stdout), {
      id: 'carol@example.com', email: 'carol@example.com', groups: ['developers', 'admins'], server: svc.url,
      loginStore: { kind: 'secret-service', label: 'OS keychain (Secret Service)' },
    });
  });

  it('broker templates lists what you may start: grants, parameters and patterns, max session; --json', async () => {
    const r = await cli(['templates']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^deploy-lambda: Update code and configuration of one Lambda function\n {2}grants: +aws \(eu-west-1\)\n {2}max session: 8h; credentials live up to 1h/m);
    assert.match(r.stdout, /--param function=<value> {2}Lambda function name \(not an ARN\); pattern \[A-Za-z0-9_-\]\+, at most 64 chars/);
    assert.match(r.stdout, /^db-migrate: .*\n {2}grants: +vault\n {2}max session: 4h\n {2}parameters: +none/m);
    assert.match(r.stdout, /start: +broker task s3-artifacts --param prefix=…/);
    const j = await cli(['templates', '--json']);
    assert.equal(j.code, 0, j.stderr);
    const { templates } = JSON.parse(j.stdout) as { templates: { name: string; grants: string[]; parameters: Record<string, { pattern: string }>; maxSessionSeconds: number }[] };
    assert.deepEqual(templates.map((t) => t.name), ['db-migrate', 'deploy-lambda', 'read-cloudwatch-logs', 's3-artifacts']);
    const lambda = templates.find((t) => t.name === 'deploy-lambda')!;
    assert.deepEqual(lambda.grants, ['aws']);
    assert.equal(lambda.parameters.function?.pattern, '[A-Za-z0-9_-]+');
    assert.equal(lambda.maxSessionSeconds, 8 * 3600);
  });

  it('broker configure aws --templates refuses names credential_process would refuse, writing nothing', async () => {
    const r = await cli(['configure', 'aws', '--templates', 'deploy-lambda,Deploy_Lambda,../x']);
    assert.equal(r.code, EXIT_CODES.invalid_request);
    assert.match(r.stderr, /--templates names 2 invalid template name\(s\)/);
    assert.match(r.stderr, /--templates: "Deploy_Lambda" is not a template name/);
    assert.match(r.stderr, /--templates: "\.\.\/x" is not a template name/);
    assert.ok(!existsSync(env.AWS_CONFIG_FILE!), 'no AWS config written');
    // The same rule as credential-process's own.
    const cp = await cli(['credential-process', '--task', 'Deploy_Lambda']);
    assert.equal(cp.code, EXIT_CODES.invalid_request, 'a usage error');
    assert.match(cp.stderr, /is not a template name/);
    const ok = await cli(['configure', 'aws', '--templates', 'deploy-lambda', '--dry-run']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /\[profile broker-deploy-lambda\]/);
  });

  it('interactive login is refused when CI is set, before any device flow, and the login stays as it was', async () => {
    const before = keyring.read(account());
    const r = await cli(['login', '--server', svc.url], { CI: 'true' });
    assert.equal(r.code, EXIT_CODES.invalid_request);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /interactive login is disabled when CI is set/);
    assert.match(r.stderr, /--id-token-file/);
    assert.doesNotMatch(r.stderr, /To log in, open/);
    assert.equal(keyring.read(account()), before);
  });

  it('broker task prints the session it started on stdout, the next step on stderr; with --json a refusal is the JSON document', async () => {
    const t = await cli(['task', 'deploy-lambda', '--param', 'function=checkout-api']);
    assert.equal(t.code, 0, t.stderr);
    const id = /^Task session ([a-z2-7]{10}) started: deploy-lambda as carol@example\.com\.deploy-lambda\.\1\n/.exec(t.stdout)?.[1];
    assert.ok(id, t.stdout);
    assert.match(t.stdout, /^ {2}AWS: AWS_PROFILE=broker-deploy-lambda \(AccessKeyId ASIA\w+, expires \S+Z\)$/m);
    assert.equal(t.stderr, 'run the agent under it: broker exec deploy-lambda -- <agent>\n');
    assert.doesNotMatch(t.stdout, /SecretAccessKey|SessionToken/);
    const st = JSON.parse((await cli(['status', '--json'])).stdout) as { sessions: { id: string }[] };
    assert.ok(st.sessions.some((s) => s.id === id), 'the id printed is the session started');
    assert.equal((await cli(['end', 'deploy-lambda'])).code, 0);

    // The service refuses the parameter (its pattern): an error on stdout as JSON, nothing else
    // there, the person's report on stderr, and the exit status of invalid_request.
    const bad = await cli(['task', 'deploy-lambda', '--param', 'function=a b', '--json']);
    assert.equal(bad.code, EXIT_CODES.invalid_request, bad.stderr);
    const { error } = JSON.parse(bad.stdout) as { error: { code: string; message: string; details?: { path: string; message: string }[] } };
    assert.equal(error.code, 'invalid_request');
    assert.ok(error.details?.some((d) => d.path === '/params/function' && /pattern/.test(d.message)), JSON.stringify(error));
    assert.match(bad.stderr, /^broker: /);
  });

  it('broker end --all ends every active task session', async () => {
    for (const [template, param] of [['deploy-lambda', 'function=checkout-api'], ['read-cloudwatch-logs', 'logGroup=/aws/lambda/checkout-api']] as const) {
      const t = await cli(['task', template, '--param', param]);
      assert.equal(t.code, 0, t.stderr);
    }
    const status = async () => (JSON.parse((await cli(['status', '--json'])).stdout) as { sessions: { template: string }[] }).sessions.map((s) => s.template).sort();
    assert.deepEqual(await status(), ['deploy-lambda', 'read-cloudwatch-logs']);
    const r = await cli(['end', '--all', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual((JSON.parse(r.stdout) as { ended: { template: string }[] }).ended.map((e) => e.template).sort(), ['deploy-lambda', 'read-cloudwatch-logs']);
    assert.deepEqual(await status(), []);
    const cp = await cli(['credential-process', '--task', 'deploy-lambda']);
    assert.equal(cp.code, EXIT_CODES.not_found);
    assert.equal(cp.stdout, '');
    const again = await cli(['end', '--all']);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.stdout, 'No active task sessions.\n');
  });

  it('broker logout forgets the login: keychain entry gone, the daemon drops its credentials', async () => {
    const t = await cli(['task', 'deploy-lambda', '--param', 'function=checkout-api']);
    assert.equal(t.code, 0, t.stderr);
    assert.equal((await cli(['credential-process', '--task', 'deploy-lambda'])).code, 0, 'served before logout');
    const r = await cli(['logout']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `Logged out of ${svc.url}\n`);
    assert.equal(keyring.read(account()), null, 'the keychain entry is gone');
    const cp = await cli(['credential-process', '--task', 'deploy-lambda']);
    assert.equal(cp.code, EXIT_CODES.not_logged_in, 'the daemon no longer serves what it held');
    assert.equal(cp.stdout, '');
    assert.match(cp.stderr, /not logged in/);
    const who = await cli(['whoami']);
    assert.equal(who.code, EXIT_CODES.not_logged_in);
    assert.match(who.stderr, /not logged in to .*\n {2}hint: run: broker login/);
    for (const args of [['whoami', '--json'], ['status', '--json']]) {
      const r = await cli(args);
      assert.equal(r.code, EXIT_CODES.not_logged_in, args.join(' '));
      assert.deepEqual(JSON.parse(r.stdout), { error: { code: 'not_logged_in', message: `not logged in to ${svc.url}`, hint: 'run: broker login' } });
    }
    const twice = await cli(['logout']);
    assert.equal(twice.code, 0, twice.stderr);
    assert.equal(twice.stdout, `Not logged in to ${svc.url}\n`);
  });
});
