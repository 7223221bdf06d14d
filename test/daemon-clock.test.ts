/**
 * The daemon over hours, on real peers with a clock the test moves: moto, the broker service and the
 * daemon all run under libfaketime reading one offset (test/peers/faketime.ts). Nothing in the
 * broker knows it is being tested.
 *
 *  - A simulated 2-hour agent run, one credential_process call per simulated minute: never a
 *    credential under the hand-out floor, never a call that waits on the network.
 *  - An STS outage: cached credentials keep being served, the problem is logged once, and after they
 *    expire credential_process fails fast with one clear line, keeping to the back-off (no upstream
 *    attempt per call, one log line); when STS is back, so are credentials.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { daemonCall, socketPath } from '../broker/daemon/socket.cjs';
import type { PingResult } from '../broker/daemon/protocol.js';
import { EXIT_CODES } from '../broker/errors.js';
import { broker, deviceLogin, makeTestHome, type TestHome } from './peers/cli.js';
import { fakeClock, type FakeClock } from './peers/faketime.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { createRole, startMoto, type Moto } from './peers/moto.js';
import { POLICIES_DIR } from './peers/paths.js';
import { startStack, type Stack } from './peers/stack.js';

const MIN = 60_000;

/** The shipped deploy-lambda (1 h credentials) and a template with STS's shortest credentials (15 min). */
function testPolicies(): string {
  const dir = mkdtempSync(join(tmpdir(), 'broker-clock-policies-'));
  copyFileSync(join(POLICIES_DIR, 'deploy-lambda.yaml'), join(dir, 'deploy-lambda.yaml'));
  writeFileSync(join(dir, 'short-lived.yaml'), `name: short-lived
description: Read one bucket, with the shortest credentials STS issues
allowed: { groups: [developers] }
session: { maxDuration: 4h, credentialLifetime: 15m }
aws:
  roleArn: arn:aws:iam::123456789012:role/broker-short-lived
  region: eu-west-1
  policy:
    Version: '2012-10-17'
    Statement:
      - Effect: Allow
        Action: [s3:ListBucket]
        Resource: arn:aws:s3:::build-artifacts
`);
  return dir;
}

describe('the daemon over time (fake clock)', () => {
  let clock: FakeClock;
  let stack: Stack;
  let keyring: TestKeyring;
  let m: TestHome;
  let env: Record<string, string>;
  const restarted: Moto[] = [];

  const cp = async (task: string) => {
    const r = await broker(['credential-process', '--task', task], env);
    return { ...r, creds: r.code === 0 ? JSON.parse(r.stdout) as { AccessKeyId: string; Expiration: string } : undefined };
  };
  const ping = async () => {
    const r = await daemonCall<PingResult>(socketPath(env), { op: 'ping' }, 5_000);
    assert.ok(r.ok);
    return r.result;
  };
  /** An agent's steps are seconds apart: let a refresh the last call started finish first. */
  const settle = async () => {
    const deadline = Date.now() + 20_000;
    while ((await ping()).tasks.some((t) => t.refreshing)) {
      assert.ok(Date.now() < deadline, 'a refresh did not finish');
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  before(async () => {
    clock = fakeClock();
    stack = await startStack({ env: clock.env, policiesDir: testPolicies() });
    keyring = await startKeyring();
    m = makeTestHome();
    env = { ...m.env, ...keyring.env, ...clock.env };
    const login = await deviceLogin(stack.svc.url, env, stack.idp, 'alice@example.com');
    assert.equal(login.code, 0, login.stderr);
  });
  after(async () => {
    await m?.stop();
    await keyring?.stop();
    for (const moto of restarted) await moto.stop();
    await stack?.stop();
  });

  for (const { task, params, floorMin, label } of [
    { task: 'deploy-lambda', params: ['--param', 'function=checkout-api'], floorMin: 15, label: '1-hour credentials: never under 15 min left' },
    // 15 min left is impossible for a 15-minute credential after any time at all; the daemon keeps
    // them above 10 min, boto3's mandatory refresh window (refresh-policy.ts).
    { task: 'short-lived', params: [], floorMin: 10, label: '15-minute credentials: never under 10 min left' },
  ]) {
    it(`a simulated 2-hour run with ${label}, and no call waits on the network`, async () => {
      const started = await broker(['task', task, ...params, '--ttl', '3h'], env);
      assert.equal(started.code, 0, started.stderr);
      const before = (await ping()).stats;
      const keys = new Set<string>();
      let least = Infinity;
      for (let minute = 1; minute <= 120; minute++) {
        clock.advance(60);
        const r = await cp(task);
        assert.equal(r.code, 0, `minute ${minute}: ${r.stderr}`);
        const left = Date.parse(r.creds!.Expiration) - clock.now();
        least = Math.min(least, left);
        assert.ok(left >= floorMin * MIN, `minute ${minute}: handed out with ${(left / MIN).toFixed(1)} min left`);
        keys.add(r.creds!.AccessKeyId);
        await settle();
      }
      const after = (await ping()).stats;
      assert.equal(after.credentialRequests - before.credentialRequests, 120);
      assert.equal(after.waitedForUpstream - before.waitedForUpstream, 0, 'every call answered from memory');
      assert.ok(keys.size >= (task === 'short-lived' ? 20 : 3), `${keys.size} distinct credentials over 2 hours`);
      assert.ok(least < (floorMin + 8) * MIN, `refreshes come late enough to matter (least ${(least / MIN).toFixed(1)} min)`);
      assert.equal((await broker(['end', task], env)).code, 0);
    });
  }

  it('an STS outage: cached credentials are served, logged once, then one clear error; back when STS is', async () => {
    const started = await broker(['task', 'deploy-lambda', '--param', 'function=checkout-api'], env);
    assert.equal(started.code, 0, started.stderr);
    const first = await cp('deploy-lambda');
    const expires = Date.parse(first.creds!.Expiration);
    await stack.moto.stop();

    // Past the refresh point (a third of the hour left): the refresh fails, the cached ones are served.
    clock.advance(41 * 60);
    const during = await cp('deploy-lambda');
    assert.equal(during.code, 0, during.stderr);
    assert.equal(during.creds!.AccessKeyId, first.creds!.AccessKeyId);
    await settle();
    const task = (await ping()).tasks.find((t) => t.template === 'deploy-lambda')!;
    assert.equal(task.health, 'retrying');
    assert.match(task.lastError ?? '', /STS/);
    // `broker status` says what is wrong under its table, not only "(retrying)".
    const status = await broker(['status'], env);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /\(retrying\)/);
    assert.match(status.stdout, /^deploy-lambda: AWS credentials: last attempt failed: .*STS.*, next attempt in \S+$/m);

    // Under the 15-minute floor now, but nothing better exists: still served, without waiting.
    clock.advance(10 * 60);
    for (let i = 0; i < 3; i++) {
      const r = await cp('deploy-lambda');
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.creds!.AccessKeyId, first.creds!.AccessKeyId);
      await new Promise((res) => setTimeout(res, 700)); // real time: back-off retries happen meanwhile
    }
    const log = () => readFileSync(join(m.runtimeDir, 'agent-credential-broker', 'daemon.log'), 'utf8');
    const warnings = log().split('\n').filter((l) => l.includes('cannot refresh credentials'));
    assert.equal(warnings.length, 1, 'logged once per change of state, not per retry');

    // Expired: one clear line, nothing on stdout, in the developer's terms (not the service
    // operator's "check aws.stsEndpoint"): what is wrong, since when, what to do.
    const requestFailed = () => log().split('\n').filter((l) => l.includes('"request failed"')).length;
    const failedBefore = requestFailed();
    clock.advance(Math.ceil((expires - clock.now()) / 1000) + 5);
    const deadLine = new RegExp('^broker credential-process: no valid credentials for "deploy-lambda": the broker service cannot get credentials '
      + `from AWS STS: STS .+; the cached ones expired at ${new Date(expires).toISOString().replace(/\./g, '\\.')} `
      + '\\(the daemon keeps retrying: try again later, or see its last attempt with: broker daemon status\\)\\n$');
    const dead = await cp('deploy-lambda');
    assert.equal(dead.code, EXIT_CODES.upstream_error, 'STS behind the proxy answers 502: upstream_error');
    assert.equal(dead.stdout, '');
    assert.equal(dead.stderr.trim().split('\n').length, 1);
    assert.match(dead.stderr, deadLine);
    assert.doesNotMatch(dead.stderr, /stsEndpoint/);

    // A client calling in a loop while STS is still down: every call fails fast with the same line,
    // the daemon keeps to its back-off (no upstream attempt per call), and logs the failure once.
    // The jitter is random, so the bound is the one the back-off's floor guarantees: attempts at least
    // 250 ms apart can number at most 1 + elapsed/250 in the loop's real time (8 calls take well under
    // 2 s here, so an attempt per call would exceed it).
    const attemptsBefore = (await ping()).stats.upstreamIssues;
    const loopStart = performance.now();
    for (let i = 0; i < 8; i++) {
      const r = await cp('deploy-lambda');
      assert.equal(r.code, EXIT_CODES.upstream_error);
      assert.match(r.stderr, deadLine);
    }
    const elapsed = performance.now() - loopStart;
    const attempts = (await ping()).stats.upstreamIssues - attemptsBefore;
    const bound = 1 + Math.floor(elapsed / 250);
    assert.ok(attempts <= bound, `${attempts} upstream attempts for 8 calls in ${elapsed.toFixed(0)} ms (at most ${bound}): the back-off holds for callers too`);
    assert.equal(requestFailed() - failedBefore, 1, 'failed requests logged once per change of state, not per call');
    assert.equal(log().split('\n').filter((l) => l.includes('cannot refresh credentials')).length, 1);

    // STS back (a new moto behind the same endpoint): the next call gets fresh credentials.
    const moto = await startMoto({ env: clock.env });
    restarted.push(moto);
    await createRole(moto.url, 'broker-deploy-lambda', JSON.stringify({
      Version: '2012-10-17',
      Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
    }), 43200);
    stack.proxy.setTarget(moto.url);
    // Past the longest back-off (a minute): the next call finds an attempt due, and it succeeds.
    clock.advance(61);
    const back = await cp('deploy-lambda');
    assert.equal(back.code, 0, back.stderr);
    assert.notEqual(back.creds!.AccessKeyId, first.creds!.AccessKeyId);
    assert.ok(Date.parse(back.creds!.Expiration) - clock.now() > 50 * MIN);
    await settle();
    assert.match(log(), /credentials refreshed again after upstream failures/);
    assert.match(log(), /requests succeed again/);
  });

  it('the broker service down: cached credentials are served, `broker status` lists what the daemon holds; after expiry the error names the service', async () => {
    const before = await cp('deploy-lambda');
    assert.equal(before.code, 0, before.stderr);
    const { sessions: [session] } = JSON.parse((await broker(['status', '--json'], env)).stdout) as { sessions: { id: string; template: string }[] };
    assert.equal(session?.template, 'deploy-lambda');
    await stack.svc.stop();

    // The service cannot be asked: the sessions the daemon holds credentials for, as it last heard
    // of them, with the warning on stderr; --json marks them held-only.
    const status = await broker(['status'], env);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stderr, /^warning: cannot reach the broker service \(cannot reach the broker service at http:\/\/127\.0\.0\.1:\d+\); showing the sessions the daemon holds credentials or Vault tokens for\n$/);
    assert.match(status.stdout, /^TEMPLATE +SESSION +LEFT +AGENT +CREDENTIALS +PARAMS\n/);
    assert.match(status.stdout, new RegExp(`^deploy-lambda +${session.id} +\\S+ +unspecified +\\S+ +function=checkout-api$`, 'm'));
    const held = JSON.parse((await broker(['status', '--json'], env)).stdout) as {
      serviceError: string; sessions: { id: string; heldOnly?: boolean; credentials: { credentialsExpireAt: string; health: string } | null }[];
    };
    assert.match(held.serviceError, /cannot reach the broker service/);
    assert.deepEqual(held.sessions.map((s) => [s.id, s.heldOnly]), [[session.id, true]]);
    assert.equal(held.sessions[0]!.credentials?.credentialsExpireAt, new Date(before.creds!.Expiration).toISOString());
    assert.equal(held.sessions[0]!.credentials?.health, 'ok');
    // What needs the service fails: with --json, as the JSON document, and the exit status of the code.
    const templates = await broker(['templates', '--json'], env);
    assert.equal(templates.code, EXIT_CODES.upstream_unavailable, templates.stderr);
    assert.equal((JSON.parse(templates.stdout) as { error: { code: string } }).error.code, 'upstream_unavailable');

    clock.advance(45 * 60);
    const during = await cp('deploy-lambda');
    assert.equal(during.code, 0, during.stderr);
    assert.equal(during.creds!.AccessKeyId, before.creds!.AccessKeyId);
    clock.advance(20 * 60);
    const dead = await cp('deploy-lambda');
    assert.equal(dead.code, EXIT_CODES.upstream_unavailable);
    assert.equal(dead.stdout, '');
    assert.match(dead.stderr, /^broker credential-process: no valid credentials for "deploy-lambda": cannot reach the broker service at http:\/\/127\.0\.0\.1:\d+; the cached ones expired at \S+Z \(the daemon keeps retrying: try again later, or see its last attempt with: broker daemon status\)\n$/);
  });
});
