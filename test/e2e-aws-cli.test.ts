/**
 * The product's main path on real peers: a developer logs in through the IdP's device flow (the
 * provider's pages driven over HTTP), starts a deploy-lambda task, writes AWS CLI profiles, and the
 * real AWS CLI gets the task's assumed-role identity from moto through credential_process.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startBrokerService, type BrokerService } from './peers/broker-service.js';
import { broker, deviceLogin, makeTestHome, run, type TestHome } from './peers/cli.js';
import { startIdp } from './peers/idp.js';
import { createRole, startMoto } from './peers/moto.js';
import { VENV_BIN } from './peers/paths.js';
import { assumeRoleCalls, startRecordingProxy } from './peers/recording-proxy.js';
import { filesContaining } from './peers/secret-scan.js';

const TRUST = (principal: string) => JSON.stringify({
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { AWS: principal }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
});

describe('end to end: device-flow login → task → configure aws → aws sts get-caller-identity', () => {
  let moto: Awaited<ReturnType<typeof startMoto>>;
  let proxy: Awaited<ReturnType<typeof startRecordingProxy>>;
  let idp: Awaited<ReturnType<typeof startIdp>>;
  let svc: BrokerService;
  let machine: TestHome;
  let home: string;
  let env: Record<string, string>;

  before(async () => {
    moto = await startMoto();
    proxy = await startRecordingProxy(moto.url);
    idp = await startIdp();
    await createRole(moto.url, 'broker-deploy-lambda', TRUST('arn:aws:iam::123456789012:root'), 43200);
    svc = await startBrokerService({ issuer: idp.issuer, stsEndpoint: proxy.url, iamEndpoint: moto.url });
    machine = makeTestHome();
    ({ home, env } = machine);
  });
  after(async () => {
    await machine?.stop();
    await svc?.stop();
    await idp?.stop();
    await proxy?.stop();
    await moto?.stop();
  });

  it('issues a session-tagged, policy-scoped credential that the AWS CLI uses', async () => {
    // 1. broker login: device flow; approve the printed user code on the IdP's own pages.
    const login = await deviceLogin(svc.url, env, idp, 'alice@example.com');
    assert.equal(login.code, 0, login.stderr);
    assert.match(login.stderr, /Logged in to .* as alice@example\.com/);
    assert.equal(login.stdout, '');

    // 2. broker task deploy-lambda
    const task = await broker(['task', 'deploy-lambda', '--param', 'function=checkout-api', '--reason', 'fix timeout', '--agent', 'claude-code', '--json'], env);
    assert.equal(task.code, 0, task.stderr);
    const started = JSON.parse(task.stdout) as { session: { id: string; roleSessionName: string }; accessKeyId: string };
    assert.ok(!task.stdout.includes('SecretAccessKey'), 'task --json must not print secrets');

    // 3. broker configure aws, into the temp HOME's ~/.aws/config
    const conf = await broker(['configure', 'aws'], env);
    assert.equal(conf.code, 0, conf.stderr);
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
      const duration = Number(call.DurationSeconds);
      assert.ok(duration >= 900 && duration <= 3600, `duration ${duration}`);
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
    const after = await broker(['credential-process', '--task', 'deploy-lambda'], env);
    assert.notEqual(after.code, 0);
    assert.equal(after.stdout, '', 'nothing on stdout on failure');
    assert.match(after.stderr, /no active "deploy-lambda" task session/);
    assert.equal(after.stderr.trim().split('\n').length, 1, 'one line on stderr');
    const awsAfter = await run(join(VENV_BIN, 'aws'), ['sts', 'get-caller-identity', '--profile', 'broker-deploy-lambda', '--endpoint-url', moto.url],
      { env: { ...process.env, ...env } });
    assert.notEqual(awsAfter.code, 0);

    // 7. no secret on disk or in the service log: not in the temp HOME, the service dir (SQLite, log) or /tmp
    const secrets = [String(creds.SecretAccessKey), String(creds.SessionToken)];
    assert.deepEqual(filesContaining([home, svc.dir, tmpdir()], secrets), []);
    assert.ok(svc.log().includes(String(creds.AccessKeyId)), 'the AccessKeyId is logged (it is what ties CloudTrail to the session)');
  });
});
