/**
 * `broker audit verify --server`: the chain downloaded from a real `broker server` (test IdP, two
 * developer machines with their own gnome-keyring and daemon: carol an admin, alice not) and checked
 * by the client with the same verifier as `--db`. The store is a fixture of 2,503 records (three
 * pages of GET /v1/admin/audit?view=chain) with signed checkpoints, edited and cut under the running
 * service as an attacker with the file would (test/audit-tamper.test.ts does every kind on --db).
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, describe, it } from 'node:test';
import { EXIT_CODES, EXIT_NO } from '../broker/errors.js';
import { generateSigningJwk, loadSigningKeys, type SigningKey } from '../broker/identity/broker-tokens.js';
import { createLogger } from '../broker/log.js';
import { AuditCheckpointer } from '../broker/server/audit-checkpoints.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { apiCaller, startBrokerService, type BrokerService } from './peers/broker-service.js';
import { broker, deviceLogin, makeTestHome, type RunResult, type TestHome } from './peers/cli.js';
import { startIdp, type TestIdp } from './peers/idp.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';

const dir = mkdtempSync(join(tmpdir(), 'broker-audit-remote-'));
const KID = 'audit-remote-1';

interface Report {
  ok: boolean; records: number; firstSeq: number | null; lastSeq: number | null;
  checkpoints: { inStore: number; offHost: number; verified: number; kids: string[] };
  firstBad: { kind: string; seq: number; message: string } | null; problems: { kind: string; seq: number | null; message: string }[];
  keys?: { source: string; from: string }; storeEvidence?: { triggers: string; sequenceCounter: string };
}
/** What both sources must agree on (the rest names the source). */
const verdict = (r: Report) => ({ ok: r.ok, records: r.records, firstSeq: r.firstSeq, lastSeq: r.lastSeq, checkpoints: r.checkpoints, firstBad: r.firstBad, problems: r.problems });

/**
 * Blocks of 499 `login` records and one checkpoint over them (seq 500, 1000, … 2500 cover 499, 999,
 * … 2499), then 3 records no checkpoint covers yet; `exported` is every record as a sink writes them.
 */
async function buildFixture(path: string, key: SigningKey): Promise<string> {
  const store = new SqliteStore(path);
  const cp = new AuditCheckpointer({ log: store.auditLog, key, everyRecords: 1_000_000, everySeconds: 3600, logger: createLogger({ level: 'error' }), now: Date.now });
  for (let b = 0; b < 5; b++) {
    for (let i = 0; i < 499; i++) await store.auditLog.append({ event: 'login', decision: 'allowed', developer: `dev${i % 7}@example.com`, reason: 'r', detail: { n: b * 499 + i } });
    await cp.checkpoint();
  }
  for (let i = 0; i < 3; i++) await store.auditLog.append({ event: 'session.start', decision: 'allowed', developer: 'tail@example.com', sessionId: `s${i}` });
  const lines: string[] = [];
  for (let after = 0; ;) {
    const page = await store.auditLog.records(after, 1000);
    if (!page.length) break;
    lines.push(...page.map((r) => JSON.stringify(r)));
    after = page.at(-1)!.seq;
  }
  await store.close();
  return `${lines.join('\n')}\n`;
}

/** What an attacker with the store file does: triggers dropped, `attack`, triggers put back (so only the attack is found). */
function attack(path: string, what: (db: DatabaseSync) => void): void {
  const db = new DatabaseSync(path, { timeout: 10_000 });
  db.exec('DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;');
  what(db);
  db.exec(`CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;`);
  db.close();
}

describe('broker audit verify --server: the client downloads the chain and checks it itself', () => {
  let idp: TestIdp;
  let svc: BrokerService;
  const keyrings: TestKeyring[] = [];
  const homes: TestHome[] = [];
  let carol: Record<string, string>;
  let alice: Record<string, string>;
  let jwksFile: string;
  let offHost: string;
  /** The store the service runs on (dbPath is the helper's default, unused here). */
  let dbPath: string;

  before(async () => {
    const jwk = await generateSigningJwk(KID);
    const keyFile = join(dir, 'audit-key.json');
    writeFileSync(keyFile, JSON.stringify(jwk), { mode: 0o600 });
    const [key] = await loadSigningKeys([{ file: keyFile }], dir, 'audit.signingKeys') as [SigningKey];
    jwksFile = join(dir, 'audit-jwks.json');
    writeFileSync(jwksFile, JSON.stringify({ keys: [key.publicJwk] }));
    const fixture = join(dir, 'fixture.db');
    offHost = join(dir, 'offhost.jsonl');
    writeFileSync(offHost, await buildFixture(fixture, key));
    const db = join(dir, 'live.db');
    dbPath = db;
    copyFileSync(fixture, db);
    idp = await startIdp();
    svc = await startBrokerService({
      issuer: idp.issuer, stsEndpoint: 'http://127.0.0.1:9', iamEndpoint: 'http://127.0.0.1:9',
      extra: {
        store: { sqlite: db }, admins: { groups: ['admins'] },
        aws: { region: 'us-east-1', stsEndpoint: 'http://127.0.0.1:9', iamEndpoint: 'http://127.0.0.1:9', checkTrustAtStartup: false },
        // Checkpoints at start and stop only, so nothing is written between the two verifications compared.
        audit: { checkpoints: { everyRecords: 1_000_000, everySeconds: 3600 }, signingKeys: [{ file: keyFile }] },
      },
    });
    for (const who of ['carol', 'alice'] as const) {
      const keyring = await startKeyring();
      const home = makeTestHome(`broker-${who}-`);
      keyrings.push(keyring);
      homes.push(home);
      const env = { ...home.env, ...keyring.env };
      const login = await deviceLogin(svc.url, env, idp, `${who}@example.com`);
      assert.equal(login.code, 0, login.stderr);
      if (who === 'carol') carol = env;
      else alice = env;
    }
  });
  after(async () => {
    for (const h of homes) await h.stop();
    for (const k of keyrings) await k.stop();
    await svc?.stop();
    await idp?.stop();
  });

  const parse = (r: RunResult): Report => {
    try { return JSON.parse(r.stdout) as Report; } catch { throw new Error(`not JSON (exit ${r.code}):\n${r.stdout}\n${r.stderr}`); }
  };
  /** Over --server as carol, then --db on the live store file: what the two said. */
  const both = async (...more: string[]) => {
    const remote = await broker(['audit', 'verify', '--server', '--json', ...more], carol, { timeoutMs: 120_000 });
    const local = await broker(['audit', 'verify', '--db', dbPath, '--keys', jwksFile, '--json', ...more], {});
    return { remote, local, r: parse(remote), l: parse(local) };
  };

  it('an intact log: exit 0 over --server with the same report as --db; keys from the service or from --keys, and the report says which; each run audited once', async () => {
    const { remote, local, r, l } = await both();
    assert.equal(remote.code, 0, remote.stdout + remote.stderr);
    assert.equal(local.code, 0, local.stdout);
    assert.deepEqual(verdict(r), verdict(l));
    assert.equal(r.ok, true);
    assert.ok(r.records > 2503, `every page downloaded: ${r.records}`);
    assert.equal(r.checkpoints.verified, r.checkpoints.inStore);
    assert.ok(r.checkpoints.inStore >= 6, 'the fixture\'s five and the service\'s own at start');
    assert.deepEqual(r.checkpoints.kids, [KID]);
    assert.equal(r.keys?.source, 'service');
    assert.match(r.keys!.from, /\/\.well-known\/audit-jwks\.json$/);
    assert.deepEqual(r.storeEvidence, { triggers: 'reported by the service', sequenceCounter: 'reported by the service' });
    const withKeys = await broker(['audit', 'verify', '--server', '--keys', jwksFile, '--json'], carol, { timeoutMs: 120_000 });
    assert.equal(withKeys.code, 0, withKeys.stderr);
    assert.deepEqual(parse(withKeys).keys, { source: 'file', from: jwksFile });
    const human = await broker(['audit', 'verify', '--server'], carol, { timeoutMs: 120_000 });
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^audit log intact: \d+ record\(s\), seq 1–\d+; \d+ of \d+ checkpoint\(s\) verified \(key audit-remote-1\), 0 off-host; append-only triggers in place \(the service says so\)$/m);
    // The download is audited once per run, with the admin and the query.
    const d = new DatabaseSync(dbPath, { readOnly: true });
    const views = (d.prepare("SELECT detail FROM audit WHERE event = 'admin.view'").all() as { detail: string }[]).map((v) => JSON.parse(v.detail) as Record<string, unknown>);
    d.close();
    assert.equal(views.length, 3, 'one per run of the three');
    assert.deepEqual(views[0], { admin: 'carol@example.com', route: 'audit', filter: { view: 'chain', limit: 1000 } });
    assert.match(human.stdout, /^keys: fetched from the service \(http:\/\/127\.0\.0\.1:\d+\/\.well-known\/audit-jwks\.json\); whoever controls the service can serve keys of its own/m);
  });

  it('an edited record: the same seq and kind over --server as over --db', async () => {
    let before = '';
    attack(dbPath, (d) => {
      before = (d.prepare('SELECT reason FROM audit WHERE seq = 8').get() as { reason: string }).reason;
      d.exec("UPDATE audit SET reason = 'nothing to see' WHERE seq = 8");
    });
    try {
      const { remote, local, r, l } = await both();
      assert.equal(remote.code, EXIT_NO, remote.stdout + remote.stderr);
      assert.equal(local.code, EXIT_NO, local.stdout + local.stderr);
      assert.deepEqual([r.firstBad?.kind, r.firstBad?.seq], ['edited', 8], JSON.stringify(r.problems));
      assert.deepEqual(verdict(r), verdict(l));
      const human = await broker(['audit', 'verify', '--server'], carol, { timeoutMs: 120_000 });
      assert.equal(human.code, EXIT_NO);
      assert.match(human.stdout, /^seq 8: edited: record 8 does not match its hash/m);
    } finally {
      attack(dbPath, (d) => d.prepare('UPDATE audit SET reason = ? WHERE seq = 8').run(before));
    }
    assert.equal((await broker(['audit', 'verify', '--server', '--json'], carol, { timeoutMs: 120_000 })).code, 0, 'intact again');
  });

  it('a tail cut with the counter fixed: unseen by the service and its store alone, caught over --server from the off-host copy of the checkpoints', async () => {
    attack(dbPath, (d) => {
      d.exec('DELETE FROM audit WHERE seq > 1800');
      d.exec("UPDATE sqlite_sequence SET seq = 1800 WHERE name = 'audit'");
    });
    // The service goes on writing after the cut (its reads are audited), so the chain it serves ends well before 2499.
    const blind = await broker(['audit', 'verify', '--server', '--json'], carol, { timeoutMs: 120_000 });
    assert.equal(blind.code, 0, `what the service and its store say: nothing is wrong\n${blind.stdout}`);
    const { remote, local, r, l } = await both('--checkpoints', offHost);
    assert.equal(remote.code, EXIT_NO, remote.stdout + remote.stderr);
    assert.equal(local.code, EXIT_NO, local.stdout + local.stderr);
    assert.equal(r.firstBad?.kind, 'truncated', JSON.stringify(r.problems));
    assert.equal(r.firstBad?.seq, r.lastSeq! + 1);
    assert.match(r.firstBad!.message, /off-host checkpoint on line 2500 covers records up to 2499: the tail was removed/);
    assert.equal(r.checkpoints.offHost, 5);
    assert.deepEqual(verdict(r), verdict(l));
    // On stdin too.
    const stdin = await broker(['audit', 'verify', '--server', '--checkpoints', '-', '--json'], carol, { input: (await import('node:fs')).readFileSync(offHost, 'utf8'), timeoutMs: 120_000 });
    assert.equal(stdin.code, EXIT_NO, stdin.stdout + stdin.stderr);
    assert.equal(parse(stdin).firstBad?.kind, 'truncated');
  });

  it('a non-admin gets exit 5 (forbidden), no stack trace; --server with --db is refused (exit 2)', async () => {
    const denied = await broker(['audit', 'verify', '--server'], alice, { timeoutMs: 60_000 });
    assert.equal(denied.code, EXIT_CODES.forbidden, denied.stderr);
    assert.doesNotMatch(denied.stderr, /\n\s+at /);
    const both = await broker(['audit', 'verify', '--server', '--db', dbPath], carol);
    assert.equal(both.code, EXIT_CODES.invalid_request, both.stderr);
    assert.match(both.stderr, /give --server or --db\/--config, not both/);
  });

  it('GET /v1/admin/audit?view=chain: every field as stored, paged by seq (at most 1,000), no filters; other views unchanged', async () => {
    const api = apiCaller(svc, idp);
    const first = await api('GET', '/v1/admin/audit?view=chain&limit=2', 'carol@example.com');
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.deepEqual(first.body.chain.map((r: { seq: number }) => r.seq), [1, 2]);
    assert.deepEqual(Object.keys(first.body.chain[0]).sort(), ['accessKeyId', 'at', 'decision', 'detail', 'developer', 'event', 'expiration', 'hash', 'hashVersion',
      'prevHash', 'reason', 'roleSessionName', 'seq', 'sessionId', 'template', 'vaultAccessor']);
    assert.equal(first.body.chain[0].prevHash, '0'.repeat(64));
    assert.equal(first.body.chain[0].template, null);
    assert.equal(first.body.chain[0].detail, '{"n":0}', 'detail is the stored JSON text');
    assert.equal(first.body.chain[0].hashVersion, 2);
    assert.equal(first.body.next, 2);
    assert.equal(typeof first.body.store.sequenceMax, 'number');
    assert.deepEqual(first.body.store.missingTriggers, []);
    const second = await api('GET', '/v1/admin/audit?view=chain&limit=2&after=2', 'carol@example.com');
    assert.deepEqual(second.body.chain.map((r: { seq: number }) => r.seq), [3, 4]);
    assert.equal(second.body.store, undefined, 'the store\'s word on the first page only');
    assert.equal(second.body.chain[0].prevHash, first.body.chain[1].hash);
    for (const [q, path] of [['view=chain&developer=dev1@example.com', 'developer'], ['view=chain&latest=1', 'latest'], ['view=chain&limit=1001', 'limit']] as const) {
      const bad = await api('GET', `/v1/admin/audit?${q}`, 'carol@example.com');
      assert.equal(bad.status, 400, q);
      assert.equal(bad.body.details[0].path, path, JSON.stringify(bad.body));
    }
    const records = await api('GET', '/v1/admin/audit?view=records&limit=1', 'carol@example.com');
    assert.equal(records.status, 200);
    assert.equal(records.body.chain, undefined);
    assert.equal(records.body.records[0].hash, undefined);
    const notAdmin = await api('GET', '/v1/admin/audit?view=chain', 'alice@example.com');
    assert.equal(notAdmin.status, 403);
  });
});
