/**
 * Limits an admin sets per template (docs/templates.md, "Limits"): open sessions of all developers
 * (409), starts in the last 24 hours of all developers and of one (429 with Retry-After), each named
 * in the message and the hint; refusals audited in aggregate; counted in the store, so a second
 * service process on the same store counts the first one's sessions. Real `broker server`
 * processes on moto and the test IdP.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { AuditRecord } from '../broker/store/audit-event.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { loadTemplates } from '../broker/templates/load.js';
import { startBrokerService, type BrokerService, apiCaller } from './peers/broker-service.js';
import { startIdp, type TestIdp } from './peers/idp.js';
import { createRole, startMoto, type Moto } from './peers/moto.js';
import { probeTemplate } from './peers/probe-template.js';

const TRUST = {
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
};

async function auditOf(dbPath: string): Promise<AuditRecord[]> {
  const store = new SqliteStore(dbPath);
  try {
    return await store.auditLog.records(0, 100_000);
  } finally {
    await store.close();
  }
}

describe('per-template limits', () => {
  let moto: Moto;
  let idp: TestIdp;
  let policies: string;
  const services: BrokerService[] = [];

  before(async () => {
    moto = await startMoto();
    idp = await startIdp();
    await createRole(moto.url, 'broker-reload-probe', TRUST, 43200);
    policies = join(mkdtempSync(join(tmpdir(), 'broker-limits-')), 'policies');
    mkdirSync(policies);
    writeFileSync(join(policies, 'limit-open.yaml'), probeTemplate('limit-open', { limits: { concurrentSessions: 1 } }));
    writeFileSync(join(policies, 'limit-mine.yaml'), probeTemplate('limit-mine', { limits: { startsPerDeveloperPerDay: 2 } }));
    writeFileSync(join(policies, 'limit-day.yaml'), probeTemplate('limit-day', { limits: { startsPerDay: 2 } }));
    assert.equal(loadTemplates(policies).problems.length, 0);
  });
  after(async () => {
    for (const s of services) await s.stop();
    await idp.stop();
    await moto.stop();
  });

  const service = async (extra: Record<string, unknown> = {}) => {
    const s = await startBrokerService({
      issuer: idp.issuer, stsEndpoint: moto.url, iamEndpoint: moto.url, policiesDir: policies,
      // A window longer than the test: the counts of refusals after the first are written at stop.
      extra: { aws: { region: 'us-east-1', stsEndpoint: moto.url, iamEndpoint: moto.url, checkTrustAtStartup: false }, limits: { auth: { auditWindow: 600 } }, ...extra },
    });
    services.push(s);
    return s;
  };
  const client = (svc: BrokerService) => {
    const call = apiCaller(svc, idp);
    const start = (template: string, who: string) => call('POST', '/v1/sessions', who, { template, params: {}, reason: 'limits test', agent: 'test' });
    const end = async (id: string, who: string) => assert.equal((await call('DELETE', `/v1/sessions/${id}`, who)).status, 200);
    return { start, end };
  };

  it('concurrentSessions: a second open session of the template, by anyone, is a 409 naming the limit; it frees when one ends', async () => {
    const svc = await service();
    const { start, end } = client(svc);
    const first = await start('limit-open', 'alice@example.com');
    assert.equal(first.status, 201, JSON.stringify(first.body));
    const refused = await start('limit-open', 'bob@example.com');
    assert.equal(refused.status, 409);
    assert.equal(refused.body.code, 'conflict');
    assert.equal(refused.body.message, '"limit-open" has 1 open task sessions; its limit concurrentSessions is 1');
    assert.match(refused.body.hint, /^try again when one ends; an admin can raise limits\.concurrentSessions \(limits in limit-open\.yaml\)$/);
    await end(first.body.session.id, 'alice@example.com');
    const next = await start('limit-open', 'bob@example.com');
    assert.equal(next.status, 201, 'a place is free again');
    await end(next.body.session.id, 'bob@example.com');
  });

  it('startsPerDeveloperPerDay: a third start in 24 hours by one developer is a 429 with Retry-After, ended sessions counted; another developer still starts', async () => {
    const svc = await service();
    const { start, end } = client(svc);
    for (let i = 0; i < 2; i++) {
      const r = await start('limit-mine', 'alice@example.com');
      assert.equal(r.status, 201);
      await end(r.body.session.id, 'alice@example.com');
    }
    const refused = await start('limit-mine', 'alice@example.com');
    assert.equal(refused.status, 429);
    assert.equal(refused.body.code, 'rate_limited');
    assert.equal(refused.body.message, 'you started "limit-mine" 2 times in the last 24 hours; its limit startsPerDeveloperPerDay is 2');
    assert.match(refused.body.hint, /^try again in \d+s at the earliest; an admin can raise limits\.startsPerDeveloperPerDay/);
    const retryAfter = Number(refused.headers.get('retry-after'));
    assert.ok(retryAfter > 86_000 && retryAfter <= 86_400, `Retry-After ${retryAfter}: when the oldest start leaves the 24-hour window`);
    assert.equal((await start('limit-mine', 'bob@example.com')).status, 201, 'the limit is per developer');
  });

  it('startsPerDay: the template\'s third start in 24 hours, whoever starts it, is a 429 naming the limit', async () => {
    const svc = await service();
    const { start } = client(svc);
    assert.equal((await start('limit-day', 'alice@example.com')).status, 201);
    assert.equal((await start('limit-day', 'bob@example.com')).status, 201);
    const refused = await start('limit-day', 'carol@example.com');
    assert.equal(refused.status, 429);
    assert.equal(refused.body.message, '"limit-day" was started 2 times in the last 24 hours; its limit startsPerDay is 2');
    assert.match(refused.body.hint, /limits\.startsPerDay \(limits in limit-day\.yaml\)/);
    assert.ok(Number(refused.headers.get('retry-after')) > 0);
  });

  it('refusals are audited in aggregate: the first at once, the rest as one count per developer, template and limit', async () => {
    const svc = await service();
    const { start } = client(svc);
    assert.equal((await start('limit-open', 'alice@example.com')).status, 201);
    for (let i = 0; i < 4; i++) assert.equal((await start('limit-open', 'bob@example.com')).status, 409);
    assert.equal((await start('limit-open', 'carol@example.com')).status, 409);
    const denied = async () => (await auditOf(svc.dbPath)).filter((r) => r.event === 'session.start' && r.decision === 'denied');
    const early = await denied();
    assert.deepEqual(early.map((r) => [r.developer, r.detail?.count]), [['bob@example.com', 1], ['carol@example.com', 1]], 'one record each at once, not one per refusal');
    await svc.stop();
    const all = await denied();
    for (const r of all) {
      assert.equal(r.template, 'limit-open');
      assert.equal(r.reason, 'limit concurrentSessions (1) reached');
      assert.equal(r.detail?.aggregated, true);
    }
    const count = (who: string) => all.filter((r) => r.developer === who).reduce((n, r) => n + (r.detail?.count as number), 0);
    assert.deepEqual([count('bob@example.com'), count('carol@example.com')], [4, 1], 'the counts add up to the refusals');
    assert.ok(all.length <= 3, `${all.length} records for 5 refusals`);
  });

  it('counts come from the store: a second service process on the same store refuses what the first one\'s sessions fill', async () => {
    const one = await service();
    const two = await service({ store: { sqlite: one.dbPath } });
    assert.equal((await client(one).start('limit-open', 'alice@example.com')).status, 201);
    const refused = await client(two).start('limit-open', 'bob@example.com');
    assert.equal(refused.status, 409, 'the other process counted the open session');
    assert.match(refused.body.message, /concurrentSessions is 1/);
  });
});
