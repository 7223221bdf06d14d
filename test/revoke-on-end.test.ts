/**
 * A developer's own end revokes what was already issued (docs/revocation.md): a real `broker server`
 * process on moto, with libfaketime moving the service's (and moto's) wall clock. Ending a session
 * of a template with `aws.revokeOnEnd` (the default) puts its id in the role's
 * `broker-revoked-sessions` deny, written in the background; once every credential of the session
 * has expired the entry is pruned and the policy removed. A template with `revokeOnEnd: false`
 * leaves its role alone.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GetRolePolicyCommand } from '@aws-sdk/client-iam';
import { parse, stringify } from 'yaml';
import { parsePolicyDocument } from '../broker/aws/trust-check.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { fakeClock, type FakeClock } from './peers/faketime.js';
import { motoIamClient } from './peers/moto.js';
import { POLICIES_DIR } from './peers/paths.js';
import { startStack, type Stack } from './peers/stack.js';

/** The shipped read-cloudwatch-logs template, and a copy on another role with revokeOnEnd: false. */
function policies(): string {
  const dir = mkdtempSync(join(tmpdir(), 'broker-revoke-policies-'));
  copyFileSync(join(POLICIES_DIR, 'read-cloudwatch-logs.yaml'), join(dir, 'read-cloudwatch-logs.yaml'));
  const doc = parse(readFileSync(join(POLICIES_DIR, 'read-cloudwatch-logs.yaml'), 'utf8')) as any;
  doc.name = 'read-logs-no-revoke';
  doc.aws.roleArn = 'arn:aws:iam::123456789012:role/broker-short-lived';
  doc.aws.revokeOnEnd = false;
  writeFileSync(join(dir, 'read-logs-no-revoke.yaml'), stringify(doc));
  return dir;
}

describe('broker end revokes the session\'s issued AWS credentials (real service, moto, libfaketime)', () => {
  let clock: FakeClock;
  let stack: Stack;
  let token: string;

  const call = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${stack.svc.url}${path}`, {
      method, headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: res.status, body: await res.json() as any };
  };

  async function stored(roleName: string): Promise<any> {
    const iam = motoIamClient(stack.moto.url);
    try {
      const out = await iam.send(new GetRolePolicyCommand({ RoleName: roleName, PolicyName: 'broker-revoked-sessions' }));
      return parsePolicyDocument(out.PolicyDocument!);
    } catch (e) {
      if (/NoSuchEntity/.test((e as Error).name)) return null;
      throw e;
    } finally {
      iam.destroy();
    }
  }

  async function until<T>(what: string, f: () => Promise<T>, ok: (v: T) => boolean, ms = 15_000): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = await f();
      if (ok(v)) return v;
      assert.ok(Date.now() < deadline, `${what} within ${ms / 1000} s (last: ${JSON.stringify(v)})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  const startAndEnd = async (template: string) => {
    const started = await call('POST', '/v1/sessions', { template, params: { logGroup: '/aws/lambda/checkout-api' }, reason: 'incident 42', agent: 'claude-code' });
    // Never the body in a message: it carries the (moto) secret key.
    assert.equal(started.status, 201, started.body.error?.message);
    assert.match(started.body.credentials?.AccessKeyId ?? '', /^ASIA/, 'credentials were issued');
    const ended = await call('DELETE', `/v1/sessions/${started.body.session.id}`);
    assert.equal(ended.status, 200, ended.body.error?.message);
    return { id: started.body.session.id as string, ended: ended.body };
  };

  before(async () => {
    clock = fakeClock();
    stack = await startStack({ env: clock.env, policiesDir: policies(), extra: { sweeper: { interval: 1 } } });
    token = '';
    const r = await call('POST', '/v1/auth/token', { id_token: await stack.idp.loginAs('alice@example.com') });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    token = r.body.access_token;
  });
  after(async () => { await stack?.stop(); });

  it('a template with aws.revokeOnEnd: false leaves its role alone', async () => {
    const { ended } = await startAndEnd('read-logs-no-revoke');
    assert.equal(ended.awsRevocation, 'off');
    // Long enough for the background writer to act on anything it had recorded (the test below
    // sees its write within ~100 ms). First: the next test moves the clock past the access token.
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal(await stored('broker-short-lived'), null);
  });
  it('ending the session puts it in the role\'s deny, with appliedAt recorded; pruned and removed once its credentials have expired', async () => {
    const { id, ended } = await startAndEnd('read-cloudwatch-logs');
    assert.equal(ended.awsRevocation, 'scheduled');
    const doc = await until('the deny document in IAM', () => stored('broker-read-cloudwatch-logs'), (d) => d !== null);
    assert.deepEqual(doc, { Version: '2012-10-17', Statement: [{
      Sid: 'BrokerRevokedSessions', Effect: 'Deny', Action: '*', Resource: '*',
      Condition: { StringEquals: { 'aws:PrincipalTag/broker:session': [id] } },
    }] });
    const store = new SqliteStore(stack.svc.dbPath);
    try {
      const applied = await until('the applied audit record', async () => (await store.auditLog.records(0, 1000)).filter((a) => a.event === 'session.revoke' && a.sessionId === id),
        (a) => a.length === 2);
      assert.deepEqual(applied.map((a) => a.decision), ['pending', 'revoked']);
      assert.match(String(applied[1]!.detail?.appliedAt), /^\d{4}-\d\d-\d\dT/);
      assert.equal(applied[0]!.detail?.revokedBy, 'alice@example.com');
    } finally {
      await store.close();
    }
    // The template's credentials live 1 h: a little more than that on, nothing of the session is
    // left to deny, and the policy goes (the prune runs at the sweeper's interval).
    clock.advance(3600 + 60);
    await until('the deny document removed', () => stored('broker-read-cloudwatch-logs'), (d) => d === null);
  });
});
