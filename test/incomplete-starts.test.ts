/**
 * A start that never completed — the service stopped (or crashed, or could not write its audit log)
 * between recording a task session as allowed and recording its first issue — does not leave an
 * open session behind across a restart: the restarted service's first sweep ends it, once no start
 * could still be under way, and leaves complete and recent starts alone.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { STSClient } from '@aws-sdk/client-sts';
import { parseServerConfig } from '../broker/config/server-config.js';
import { createLogger } from '../broker/log.js';
import { startServer } from '../broker/server/start.js';
import { START_GRACE_MS } from '../broker/sessions/sweeper.js';
import { TaskSessionService } from '../broker/sessions/task-session-service.js';
import { StsCredentialIssuer } from '../broker/aws/sts-issuer.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import type { NewTaskSession } from '../broker/store/store.js';
import { TemplateCatalog } from '../broker/templates/catalog.js';
import { loadTemplatesOrThrow } from '../broker/templates/load.js';
import { startIdp } from './peers/idp.js';
import { startMoto } from './peers/moto.js';
import { POLICIES_DIR } from './peers/paths.js';
import { assumeRoleCalls, startRecordingProxy } from './peers/recording-proxy.js';

const HOUR = 3_600_000;

describe('starts that never completed, across a restart', () => {
  let dir: string;
  let idp: Awaited<ReturnType<typeof startIdp>>;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'broker-incomplete-'));
    idp = await startIdp();
  });
  after(async () => {
    await idp?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A session recorded as allowed (as the service does), with whatever issue records follow it. */
  async function seed(store: SqliteStore, id: string, o: { ageMs: number; grants: string[]; issued: string[] }): Promise<void> {
    const now = Date.now();
    const s: NewTaskSession = {
      id, developer: 'alice@example.com', template: o.grants.includes('aws') ? 'deploy-lambda' : 'db-migrate', params: {},
      reason: '', agent: 'test', roleSessionName: `alice-${id}`, createdAt: now - o.ageMs, expiresAt: now - o.ageMs + 2 * HOUR,
    };
    await store.sessions.create(s, {
      event: 'session.start', decision: 'allowed', developer: s.developer, template: s.template, sessionId: id,
      detail: { params: {}, agent: 'test', ttlSeconds: 7200, grants: o.grants },
    });
    for (const event of o.issued) {
      await store.auditLog.append({ event: event as 'credentials.issue' | 'vault.issue', decision: 'issued', developer: s.developer, template: s.template, sessionId: id });
    }
  }

  it('the first sweep after a restart ends stale incomplete starts, and only those', async () => {
    const dbPath = join(dir, 'broker.db');
    const old = 10 * 60_000;
    const before = new SqliteStore(dbPath);
    await seed(before, 'aws-never-issued', { ageMs: old, grants: ['aws'], issued: [] });
    // AWS is issued last: a Vault token alone does not complete a start that also grants AWS.
    await seed(before, 'both-vault-only', { ageMs: old, grants: ['vault', 'aws'], issued: ['vault.issue'] });
    await seed(before, 'vault-never-issued', { ageMs: old, grants: ['vault'], issued: [] });
    await seed(before, 'aws-complete', { ageMs: old, grants: ['aws'], issued: ['credentials.issue'] });
    await seed(before, 'both-complete', { ageMs: old, grants: ['vault', 'aws'], issued: ['vault.issue', 'credentials.issue'] });
    await seed(before, 'vault-complete', { ageMs: old, grants: ['vault'], issued: ['vault.issue'] });
    // Younger than any start can take: it may still be under way (another process), so it is left.
    await seed(before, 'aws-recent', { ageMs: START_GRACE_MS - 60_000, grants: ['aws'], issued: [] });
    await before.close();

    const config = parseServerConfig({
      listen: { host: '127.0.0.1', port: 0 },
      policiesDir: POLICIES_DIR,
      store: { sqlite: dbPath },
      oidc: { issuer: idp.issuer, audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli', allowInsecureHttp: true },
      tokens: { signingKeys: 'ephemeral' },
      aws: { region: 'us-east-1', stsEndpoint: 'http://127.0.0.1:9', checkTrustAtStartup: false },
    }, dir);
    const server = await startServer(config, { log: createLogger({ level: 'silent' }) });
    let open: string[] = [];
    try {
      // The sweeper runs once at start; wait for its writes.
      for (let i = 0; i < 100; i++) {
        const s = new SqliteStore(dbPath);
        open = (await s.sessions.active()).map((x) => x.id).sort();
        await s.close();
        if (!open.includes('aws-never-issued')) break;
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      await server.stop();
    }
    assert.deepEqual(open, ['aws-complete', 'aws-recent', 'both-complete', 'vault-complete']);

    const after = new SqliteStore(dbPath);
    try {
      const ends = (await after.auditLog.records()).filter((r) => r.event === 'session.end');
      assert.deepEqual(ends.map((r) => r.sessionId).sort(), ['aws-never-issued', 'both-vault-only', 'vault-never-issued']);
      for (const r of ends) {
        assert.equal(r.decision, 'ended');
        assert.equal(r.reason, 'its start never completed (no first issue was recorded)');
      }
      assert.equal((await after.sessions.get('both-vault-only'))!.endReason, 'its start never completed (no first issue was recorded)');
      assert.equal(await after.auditLog.verify(), null, 'the audit chain is intact');
    } finally {
      await after.close();
    }
  });

  it('a start still under way is never taken for an incomplete one, however long its first issue takes', { timeout: 30_000 }, async () => {
    const moto = await startMoto();
    const proxy = await startRecordingProxy(moto.url);
    const store = new SqliteStore(join(dir, 'slow-start.db'));
    let clock = Date.now();
    const sts = new STSClient({ region: 'us-east-1', endpoint: proxy.url, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });
    const sessions = new TaskSessionService({
      store, templates: new TemplateCatalog(loadTemplatesOrThrow(POLICIES_DIR)), issuer: new StsCredentialIssuer(sts, 10_000), log: createLogger({ level: 'silent' }),
      maxActiveSessions: 5, now: () => clock,
    });
    // STS holds the AssumeRole until the test lets go, while the service's clock passes the grace.
    let release!: () => void;
    const held = new Promise<void>((r) => { release = r; });
    proxy.onRequest((req) => (req.action === 'AssumeRole' ? held : undefined));
    try {
      const alice = { id: 'alice@example.com', email: 'alice@example.com', groups: ['developers'] };
      const starting = sessions.start(alice, { template: 'read-cloudwatch-logs', params: { logGroup: '/aws/lambda/checkout-api' }, reason: '', agent: 'test' });
      while (assumeRoleCalls(proxy.requests).length === 0) await new Promise((r) => setTimeout(r, 20));
      clock += START_GRACE_MS + 60_000;
      assert.equal((await store.sessions.incompleteStarts(clock - START_GRACE_MS)).length, 1, 'the store alone sees an incomplete start');
      assert.deepEqual(await sessions.endIncompleteStarts(START_GRACE_MS), [], 'but it is under way here: left alone');
      release();
      const started = await starting;
      assert.ok(started.credentials?.accessKeyId, 'the start completes');
      assert.deepEqual((await store.sessions.active()).map((x) => x.id), [started.session.id]);
      assert.deepEqual(await sessions.endIncompleteStarts(START_GRACE_MS), [], 'and, complete, is never ended as incomplete');
    } finally {
      release();
      proxy.onRequest(undefined);
      await store.close();
      sts.destroy();
      await proxy.stop();
      await moto.stop();
    }
  });
});
