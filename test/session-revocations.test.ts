/**
 * Targeted STS revocation (docs/revocation.md): the role's `broker-revoked-sessions` document as
 * moto's IAM stores it after revokes and prunes, what that document denies (evaluated with
 * @cloud-copilot/iam-simulate: moto enforces no IAM), the role-wide fallback when the entries do
 * not fit, one write at a time per role, and retries until IAM accepts.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GetRolePolicyCommand } from '@aws-sdk/client-iam';
import { runSimulation } from '@cloud-copilot/iam-simulate';
import { IamRoleDenyPolicies, REVOCATION_POLICY_NAME, policyChars } from '../broker/aws/role-revocations.js';
import { parsePolicyDocument } from '../broker/aws/trust-check.js';
import { MAX_ROLE_INLINE_POLICY_CHARS } from '../broker/limits/aws.js';
import { createLogger } from '../broker/log.js';
import { SessionRevocations, type RoleDeny, type RoleDenyPolicies } from '../broker/sessions/session-revocations.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { createRole, motoIamClient, startMoto, type Moto } from './peers/moto.js';

const ACCOUNT = '123456789012';
const TRUST = { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCOUNT}:root` }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }] };
const HOUR = 3600_000;
const by = { admin: 'carol@example.com', reason: 'laptop stolen' };
const DEV = 'alice@example.com';

/** A clock the test moves (the store and the writer read it). */
function testClock(start = Date.parse('2026-12-03T09:00:00Z')) {
  let t = start;
  return { now: () => t, advance: (ms: number) => { t += ms; } };
}

function newStore(now: () => number): SqliteStore {
  return new SqliteStore(join(mkdtempSync(join(tmpdir(), 'broker-revoke-')), 'broker.db'), { now });
}

const sessionStatement = (ids: string[]) => ({
  Sid: 'BrokerRevokedSessions', Effect: 'Deny', Action: '*', Resource: '*',
  Condition: { StringEquals: { 'aws:PrincipalTag/broker:session': ids } },
});

describe('session revocations against moto IAM', () => {
  let moto: Moto;
  const iam = () => motoIamClient(moto.url);
  let roleN = 0;
  const newRole = async () => createRole(moto.url, `broker-revoke-${++roleN}`, TRUST);
  const roleName = (arn: string) => arn.split('/').at(-1)!;

  /** The stored document, parsed; null when the role has no such policy. */
  async function stored(roleArn: string): Promise<unknown> {
    const c = iam();
    try {
      const out = await c.send(new GetRolePolicyCommand({ RoleName: roleName(roleArn), PolicyName: REVOCATION_POLICY_NAME }));
      return parsePolicyDocument(out.PolicyDocument!);
    } catch (e) {
      if ((e as Error).name === 'NoSuchEntityException' || (e as Error).name === 'NoSuchEntity') return null;
      throw e;
    } finally {
      c.destroy();
    }
  }

  function setup(o: { policies?: RoleDenyPolicies; retry?: { firstMs: number; maxMs: number } } = {}) {
    const clock = testClock();
    const store = newStore(clock.now);
    const client = iam();
    const revocations = new SessionRevocations({
      store, policies: o.policies ?? new IamRoleDenyPolicies(client), log: createLogger({ level: 'silent' }), now: clock.now,
      retry: o.retry ?? { firstMs: 50, maxMs: 200 },
    });
    return { clock, store, revocations, client, close: async () => { await revocations.stop(); client.destroy(); await store.close(); } };
  }

  before(async () => { moto = await startMoto(); });
  after(async () => { await moto.stop(); });

  it('writes exactly the intended document, records appliedAt, and after the last entry expires deletes it', async () => {
    const t = setup();
    try {
      const role = await newRole();
      const now = t.clock.now();
      await t.revocations.revokeSessions([{ id: 'bbbbbbbbbb', developer: DEV, roleArn: role, until: now + HOUR }, { id: 'aaaaaaaaaa', developer: DEV, roleArn: role, until: now + 2 * HOUR }], by);
      const [r] = await t.revocations.flush();
      assert.deepEqual(r, { roleArn: role, ok: true, outcome: 'written' });
      assert.deepEqual(await stored(role), { Version: '2012-10-17', Statement: [sessionStatement(['aaaaaaaaaa', 'bbbbbbbbbb'])] });
      const state = (await t.revocations.state(role))!;
      assert.deepEqual(state.entries.map((e) => [e.value, e.appliedAt, e.revokedBy]), [['bbbbbbbbbb', now, by.admin], ['aaaaaaaaaa', now, by.admin]]);
      const audit = (await t.store.auditLog.records(0, 100)).filter((a) => a.event === 'session.revoke').map((a) => `${a.sessionId}:${a.decision}`);
      assert.deepEqual(audit, ['bbbbbbbbbb:pending', 'aaaaaaaaaa:pending', 'bbbbbbbbbb:revoked', 'aaaaaaaaaa:revoked']);
      const pending = (await t.store.auditLog.records(0, 100)).filter((a) => a.event === 'session.revoke' && a.decision === 'pending');
      assert.deepEqual(pending.map((a) => [a.developer, a.detail?.['revokedBy']]), [[DEV, by.admin], [DEV, by.admin]], 'whose session, and who revoked it');

      // Offboarding adds a SourceIdentity statement beside the sessions'.
      await t.revocations.revokeDeveloper('alice@example.com', [role], now + HOUR, by);
      await t.revocations.flush();
      assert.deepEqual(await stored(role), { Version: '2012-10-17', Statement: [sessionStatement(['aaaaaaaaaa', 'bbbbbbbbbb']), {
        Sid: 'BrokerRevokedDevelopers', Effect: 'Deny', Action: '*', Resource: '*', Condition: { StringEquals: { 'aws:SourceIdentity': ['alice@example.com'] } },
      }] });

      // An hour on, bbbbbbbbbb's credentials and alice's have all expired: pruned, rewritten.
      t.clock.advance(HOUR);
      assert.deepEqual(await t.revocations.prune(), [role]);
      await t.revocations.flush();
      assert.deepEqual(await stored(role), { Version: '2012-10-17', Statement: [sessionStatement(['aaaaaaaaaa'])] });
      // Another hour: nothing left to deny, so the policy is removed, not left empty.
      t.clock.advance(HOUR);
      await t.revocations.prune();
      assert.deepEqual(await t.revocations.flush(), [{ roleArn: role, ok: true, outcome: 'deleted' }]);
      assert.equal(await stored(role), null);
      assert.deepEqual((await t.revocations.state(role))!.entries, []);
    } finally {
      await t.close();
    }
  });

  it('the stored document denies a request carrying the revoked session\'s tag, and not another session of the same role (iam-simulate)', async () => {
    const t = setup();
    try {
      const role = await newRole();
      await t.revocations.revokeSessions([{ id: 'revokedxxx', developer: DEV, roleArn: role, until: t.clock.now() + HOUR }], by);
      await t.revocations.flush();
      const deny = await stored(role);
      assert.ok(deny, 'the document was written');
      const decide = async (sessionId: string) => {
        const r = await runSimulation({
          request: {
            principal: `arn:aws:sts::${ACCOUNT}:assumed-role/${roleName(role)}/alice@example.com-s3-${sessionId}`,
            action: 's3:GetObject', resource: { resource: 'arn:aws:s3:::artifacts/build.zip', accountId: ACCOUNT },
            contextVariables: {
              'aws:PrincipalTag/broker:session': sessionId, 'aws:PrincipalTag/broker:developer': 'alice@example.com',
              'aws:SourceIdentity': 'alice@example.com', 'aws:PrincipalArn': role, 'aws:PrincipalAccount': ACCOUNT,
            },
          },
          // The role's permissions, and the deny document as moto stored it.
          identityPolicies: [
            { name: 'role-allows-artifacts', policy: { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 's3:GetObject', Resource: 'arn:aws:s3:::artifacts/*' }] } },
            { name: REVOCATION_POLICY_NAME, policy: deny as any },
          ],
          serviceControlPolicies: [], resourceControlPolicies: [],
        } as Parameters<typeof runSimulation>[0], {});
        assert.notEqual(r.resultType, 'error', JSON.stringify(r));
        return (r as { overallResult: string }).overallResult;
      };
      assert.equal(await decide('revokedxxx'), 'ExplicitlyDenied');
      assert.equal(await decide('otherxxxxx'), 'Allowed');
    } finally {
      await t.close();
    }
  });

  it('when the entries no longer fit, falls back to the role-wide aws:TokenIssueTime deny, loudly, and prunes it once they have expired', async () => {
    const t = setup();
    try {
      const role = await newRole();
      const now = t.clock.now();
      // 10-character ids, 13 characters each in the document: 700 fit in 10,240, 800 do not.
      const ids = (n: number, p: string) => Array.from({ length: n }, (_, i) => `${p}${String(i).padStart(9, '0')}`.slice(0, 10));
      await t.revocations.revokeSessions(ids(700, 'a').map((id) => ({ id, developer: DEV, roleArn: role, until: now + HOUR })), by);
      assert.deepEqual((await t.revocations.flush())[0]!.outcome, 'written');
      const fits = JSON.stringify(await stored(role));
      assert.ok(policyChars(fits) <= MAX_ROLE_INLINE_POLICY_CHARS, `${policyChars(fits)} chars`);
      assert.deepEqual(await t.revocations.warnings(), []);

      await t.revocations.revokeSessions(ids(100, 'b').map((id) => ({ id, developer: DEV, roleArn: role, until: now + 2 * HOUR })), by);
      assert.deepEqual((await t.revocations.flush())[0]!.outcome, 'fallback');
      const cutoff = new Date(Math.ceil(now / 1000) * 1000).toISOString().replace('.000Z', 'Z');
      assert.deepEqual(await stored(role), { Version: '2012-10-17', Statement: [{
        Sid: 'BrokerRevokeOlderSessions', Effect: 'Deny', Action: '*', Resource: '*', Condition: { DateLessThan: { 'aws:TokenIssueTime': cutoff } },
      }] });
      const fallback = (await t.store.auditLog.records(0, 10_000)).filter((a) => a.event === 'revocation.fallback');
      assert.equal(fallback.length, 1);
      assert.equal(fallback[0]!.decision, 'revoked');
      assert.equal(fallback[0]!.detail?.sessions, 800);
      const warnings = await t.revocations.warnings();
      assert.deepEqual(warnings.map((w) => [w.roleArn, w.kind]), [[role, 'fallback']]);
      assert.match(warnings[0]!.message, /every credential of .* issued before .* is denied/);
      const state = (await t.revocations.state(role))!;
      assert.ok(state.entries.every((e) => e.coveredAt !== null && e.appliedAt !== null), 'every entry covered and applied');

      // A session revoked after the fallback is added by its tag beside it.
      t.clock.advance(60_000);
      await t.revocations.revokeSessions([{ id: 'latexxxxxx', developer: DEV, roleArn: role, until: t.clock.now() + HOUR }], by);
      await t.revocations.flush();
      assert.deepEqual((await stored(role) as { Statement: unknown[] }).Statement, [sessionStatement(['latexxxxxx']), {
        Sid: 'BrokerRevokeOlderSessions', Effect: 'Deny', Action: '*', Resource: '*', Condition: { DateLessThan: { 'aws:TokenIssueTime': cutoff } },
      }]);

      // Once the credentials it stood for have expired (2 h), the fallback goes, and the warning with it.
      t.clock.advance(2 * HOUR);
      await t.revocations.prune();
      await t.revocations.flush();
      assert.equal(await stored(role), null);
      assert.deepEqual(await t.revocations.warnings(), []);
    } finally {
      await t.close();
    }
  });

  it('serializes the writes of one role: concurrent revokes never overlap in IAM and end in one document with every session', async () => {
    const real = setup();
    let inFlight = 0;
    let most = 0;
    const slow: RoleDenyPolicies = {
      apply: async (roleArn: string, deny: RoleDeny) => {
        inFlight++;
        most = Math.max(most, inFlight);
        try {
          await new Promise((r) => setTimeout(r, 30));
          return await new IamRoleDenyPolicies(real.client).apply(roleArn, deny);
        } finally {
          inFlight--;
        }
      },
    };
    await real.close();
    const t = setup({ policies: slow });
    try {
      const role = await newRole();
      const ids = Array.from({ length: 20 }, (_, i) => `concur${String(i).padStart(4, '0')}`);
      await Promise.all(ids.map(async (id) => {
        await t.revocations.revokeSessions([{ id, developer: DEV, roleArn: role, until: t.clock.now() + HOUR }], by);
        await t.revocations.flush();
      }));
      await t.revocations.flush();
      assert.equal(most, 1, 'one IAM write at a time for the role');
      assert.deepEqual(await stored(role), { Version: '2012-10-17', Statement: [sessionStatement([...ids].sort())] });
      assert.deepEqual(await t.store.revocations.outdated(), []);
    } finally {
      await t.close();
    }
  });

  it('retries with back-off until IAM accepts: a role that does not exist yet, then appears', async () => {
    const t = setup({ retry: { firstMs: 50, maxMs: 100 } });
    try {
      t.revocations.start();
      const name = `broker-revoke-late-${Date.now()}`;
      const role = `arn:aws:iam::${ACCOUNT}:role/${name}`;
      await t.revocations.revokeSessions([{ id: 'latesessio', developer: DEV, roleArn: role, until: t.clock.now() + HOUR }], by);
      const [first] = await t.revocations.flush();
      assert.equal(first!.ok, false);
      assert.match(first!.error!, /NoSuchEntity/);
      // A second attempt queues behind any write already scheduled (the one the revoke itself
      // scheduled), so once it is back every write so far has failed, and only a retry can succeed.
      assert.equal((await t.revocations.flush())[0]!.ok, false);
      assert.equal((await t.revocations.state(role))!.entries[0]!.appliedAt, null, 'not applied while IAM refuses');
      await createRole(moto.url, name, TRUST);
      // No flush: the background writer's retry gets it in.
      const deadline = Date.now() + 10_000;
      while ((await stored(role)) === null) {
        assert.ok(Date.now() < deadline, 'the writer retried within 10 s');
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.deepEqual(await stored(role), { Version: '2012-10-17', Statement: [sessionStatement(['latesessio'])] });
      // The store may lag the write by a moment: wait for the applied record.
      while ((await t.store.revocations.outdated()).length) await new Promise((r) => setTimeout(r, 20));
      assert.notEqual((await t.revocations.state(role))!.entries[0]!.appliedAt, null);
    } finally {
      await t.close();
    }
  });

  it('never sends IAM a document over the limit: it answers too-large and writes nothing', async () => {
    // moto does not check the quota, so the broker must; a smaller limit keeps the document short.
    const t = setup();
    try {
      const role = await newRole();
      const small = new IamRoleDenyPolicies(t.client, 200);
      assert.deepEqual(await small.apply(role, { sessionIds: Array.from({ length: 20 }, (_, i) => `s${String(i).padStart(9, '0')}`), sourceIdentities: [] }), { outcome: 'too-large', chars: 441 });
      assert.equal(await stored(role), null, 'nothing written');
    } finally {
      await t.close();
    }
  });
});
