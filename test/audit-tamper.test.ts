/**
 * Tamper evidence of the audit log, tried as an attacker with write access to the store file would:
 * open it with node:sqlite, drop the append-only triggers, then edit, delete, move or cut records,
 * recompute hashes (with the documented canonical encoding, audit-chain.ts), forge checkpoints. Each
 * is detected by the real `broker audit verify --db` with the right seq and kind; a cut tail only
 * from an off-host copy of the checkpoints. The real `broker server` refuses to start on a chain
 * broken since its last checkpoint, and starts with --accept-broken-audit, which it records.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, describe, it } from 'node:test';
import { CompactSign, generateKeyPair, type JWK } from 'jose';
import { stringify } from 'yaml';
import { EXIT_CODES, EXIT_NO } from '../broker/errors.js';
import { generateSigningJwk, loadSigningKeys, type SigningKey } from '../broker/identity/broker-tokens.js';
import { createLogger } from '../broker/log.js';
import { AuditCheckpointer } from '../broker/server/audit-checkpoints.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { SqliteAuditReader } from '../broker/store/sqlite/audit-chain-source.js';
import { parallelWalker } from '../broker/store/sqlite/audit-parallel.js';
import { AuditKeySet, verifyAuditLog } from '../broker/store/audit-verify.js';
import { startBrokerService } from './peers/broker-service.js';
import { broker } from './peers/cli.js';
import { POLICIES_DIR } from './peers/paths.js';

const dir = mkdtempSync(join(tmpdir(), 'broker-audit-tamper-'));
const KID = 'audit-test-1';
let key: SigningKey;
let keyFile: string;
let jwksFile: string;
let fixture: string;
/** Every record of the fixture as an audit sink exports them (JSON lines of AuditRecord). */
let exported: string;
const silent = createLogger({ level: 'error' });

/**
 * The fixture: blocks of 5 `login` records and one checkpoint covering them (seq 6, 12, 18, 24, 30
 * cover 5, 11, 17, 23, 29), then 3 records no checkpoint covers yet (31–33).
 */
async function buildFixture(path: string): Promise<void> {
  const store = new SqliteStore(path);
  const cp = new AuditCheckpointer({ log: store.auditLog, key, everyRecords: 1_000_000, everySeconds: 3600, logger: silent, now: Date.now });
  for (let b = 0; b < 5; b++) {
    for (let i = 0; i < 5; i++) await store.auditLog.append({ event: 'login', decision: 'allowed', developer: `dev${b}${i}@example.com`, reason: 'r', detail: { n: b * 5 + i } });
    await cp.checkpoint();
  }
  for (let i = 0; i < 3; i++) await store.auditLog.append({ event: 'session.start', decision: 'allowed', developer: 'tail@example.com', sessionId: `s${i}` });
  exported = (await store.auditLog.records()).map((r) => JSON.stringify(r)).join('\n');
  await store.close();
}

let n = 0;
/** A copy of the fixture, with `attack` done on it as an attacker would (triggers dropped first). */
function tampered(attack: (db: DatabaseSync) => void, dropTriggers = true): string {
  const path = join(dir, `t${++n}.db`);
  copyFileSync(fixture, path);
  const db = new DatabaseSync(path);
  if (dropTriggers) db.exec('DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;');
  attack(db);
  // Triggers put back, so only the attack itself is what verify finds.
  if (dropTriggers) {
    db.exec(`CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;`);
  }
  db.close();
  return path;
}

/** The attacker's own hash, from the encoding audit-chain.ts documents (v2). */
function v2(r: Record<string, unknown>, prev: string): string {
  return createHash('sha256').update(JSON.stringify([2, r.seq, prev, r.at, r.event, r.decision, r.developer, r.template, r.session_id,
    r.reason, r.access_key_id, r.role_session_name, r.expiration, r.detail, r.vault_accessor])).digest('hex');
}

/** Recomputes prev_hash and hash of every record from `fromSeq` on (what an attacker does after an edit). */
function rechain(db: DatabaseSync, fromSeq: number): void {
  let prev = (db.prepare('SELECT hash FROM audit WHERE seq < ? ORDER BY seq DESC LIMIT 1').get(fromSeq) as { hash: string } | undefined)?.hash ?? '0'.repeat(64);
  for (const r of db.prepare('SELECT * FROM audit WHERE seq >= ? ORDER BY seq').all(fromSeq) as Record<string, unknown>[]) {
    const h = v2(r, prev);
    db.prepare('UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?').run(prev, h, r.seq as number);
    prev = h;
  }
}

interface Report { ok: boolean; firstBad: { kind: string; seq: number; through?: number; message: string } | null; problems: { kind: string; seq: number | null; message: string }[]; records: number; checkpoints: { inStore: number; verified: number; kids: string[] } }

async function verify(db: string, ...more: string[]): Promise<{ code: number | null; report: Report; stderr: string; stdout: string }> {
  const r = await broker(['audit', 'verify', '--db', db, '--keys', jwksFile, '--json', ...more], {});
  let report: Report;
  try { report = JSON.parse(r.stdout) as Report; } catch { throw new Error(`not JSON (exit ${r.code}):\n${r.stdout}\n${r.stderr}`); }
  return { code: r.code, report, stderr: r.stderr, stdout: r.stdout };
}

async function assertBroken(db: string, kind: string, seq: number, ...more: string[]): Promise<Report> {
  const { code, report } = await verify(db, ...more);
  assert.equal(code, EXIT_NO, JSON.stringify(report, null, 2));
  assert.equal(report.ok, false);
  assert.deepEqual([report.firstBad?.kind, report.firstBad?.seq], [kind, seq], JSON.stringify(report.problems, null, 2));
  return report;
}

before(async () => {
  const jwk = await generateSigningJwk(KID);
  keyFile = join(dir, 'audit-key.json');
  writeFileSync(keyFile, JSON.stringify(jwk), { mode: 0o600 });
  [key] = await loadSigningKeys([{ file: keyFile }], dir, 'audit.signingKeys') as [SigningKey];
  jwksFile = join(dir, 'audit-jwks.json');
  writeFileSync(jwksFile, JSON.stringify({ keys: [key.publicJwk] }));
  fixture = join(dir, 'fixture.db');
  await buildFixture(fixture);
});

describe('broker audit verify: an intact log', () => {
  it('exits 0 with every record, checkpoint and trigger checked, human and --json', async () => {
    const { code, report } = await verify(fixture);
    assert.equal(code, 0, JSON.stringify(report));
    assert.equal(report.ok, true);
    assert.equal(report.records, 33);
    assert.deepEqual(report.checkpoints, { inStore: 5, offHost: 0, verified: 5, kids: [KID] });
    const human = await broker(['audit', 'verify', '--db', fixture, '--keys', jwksFile], {});
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^audit log intact: 33 record\(s\), seq 1–33; 5 of 5 checkpoint\(s\) verified \(key audit-test-1\)/);
  });

  it('checkpoints are audit records: audit.checkpoint, signed, detail {jws, seq, head, count} over the record they cover', () => {
    const db = new DatabaseSync(fixture, { readOnly: true });
    const cps = db.prepare("SELECT seq, decision, detail FROM audit WHERE event = 'audit.checkpoint' ORDER BY seq").all() as { seq: number; decision: string; detail: string }[];
    assert.deepEqual(cps.map((c) => c.seq), [6, 12, 18, 24, 30]);
    for (const c of cps) {
      const d = JSON.parse(c.detail) as { jws: string; seq: number; head: string; count: number };
      assert.equal(c.decision, 'signed');
      assert.deepEqual(Object.keys(d).sort(), ['count', 'head', 'jws', 'seq']);
      assert.equal(d.seq, c.seq - 1);
      assert.equal(d.count, c.seq - 1);
      assert.equal(d.head, (db.prepare('SELECT hash FROM audit WHERE seq = ?').get(d.seq) as { hash: string }).hash);
      const [h, p] = d.jws.split('.').slice(0, 2).map((x) => JSON.parse(Buffer.from(x, 'base64url').toString()) as Record<string, unknown>);
      assert.deepEqual(h, { alg: 'ES256', kid: KID, typ: 'broker-audit-checkpoint+json' });
      assert.deepEqual({ ...p, at: undefined }, { seq: d.seq, head: d.head, count: d.count, at: undefined });
    }
    db.close();
  });

  it('without a key to check the checkpoints it refuses to answer (exit 2), and says where the keys are', async () => {
    const r = await broker(['audit', 'verify', '--db', fixture], {});
    assert.equal(r.code, EXIT_CODES.invalid_request, r.stderr);
    assert.match(r.stderr, /no key to check them/);
    assert.match(r.stderr, /audit-jwks\.json/);
  });

  it('a store file that is not there: not_found, no stack trace', async () => {
    const r = await broker(['audit', 'verify', '--db', join(dir, 'nope.db'), '--keys', jwksFile], {});
    assert.equal(r.code, EXIT_CODES.not_found);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });
});

describe('broker audit verify: each tampering, with the first bad seq and what is wrong', () => {
  it('an edited record', async () => {
    const db = tampered((d) => d.exec("UPDATE audit SET reason = 'nothing to see' WHERE seq = 8"));
    const r = await assertBroken(db, 'edited', 8);
    assert.match(r.firstBad!.message, /record 8 does not match its hash/);
  });

  it('an edited record whose own hash was recomputed', async () => {
    const db = tampered((d) => {
      d.exec("UPDATE audit SET developer = 'mallory@example.com' WHERE seq = 8");
      const r = d.prepare('SELECT * FROM audit WHERE seq = 8').get() as Record<string, unknown>;
      d.prepare('UPDATE audit SET hash = ? WHERE seq = 8').run(v2(r, r.prev_hash as string));
    });
    const r = await assertBroken(db, 'edited', 8);
    assert.match(r.firstBad!.message, /record 8 was changed and its hash recomputed/);
  });

  it('an edit with every later hash recomputed: caught by the next signed checkpoint, between the last good one and it', async () => {
    const db = tampered((d) => { d.exec("UPDATE audit SET developer = 'mallory@example.com' WHERE seq = 8"); rechain(d, 8); });
    const r = await assertBroken(db, 'rewritten', 6);
    assert.equal(r.firstBad!.through, 11);
    assert.match(r.firstBad!.message, /does not match the checkpoint at seq 12/);
  });

  it('a record missing in the middle', async () => {
    const r = await assertBroken(tampered((d) => d.exec('DELETE FROM audit WHERE seq = 20')), 'missing', 20);
    assert.match(r.firstBad!.message, /record 20 is missing/);
  });

  it('a missing record with the later ones renumbered and rechained: the checkpoints\' counts and heads no longer match', async () => {
    const db = tampered((d) => {
      d.exec('DELETE FROM audit WHERE seq = 20');
      for (let s = 21; s <= 33; s++) d.prepare('UPDATE audit SET seq = ? WHERE seq = ?').run(s - 1, s);
      d.exec("UPDATE sqlite_sequence SET seq = 32 WHERE name = 'audit'");
      rechain(d, 20);
    });
    const r = await assertBroken(db, 'rewritten', 18);
    assert.equal(r.firstBad!.through, 23);
  });

  it('reordered records', async () => {
    const db = tampered((d) => d.exec('UPDATE audit SET seq = -1 WHERE seq = 14; UPDATE audit SET seq = 14 WHERE seq = 15; UPDATE audit SET seq = 15 WHERE seq = -1;'));
    const r = await assertBroken(db, 'reordered', 14);
    assert.match(r.firstBad!.message, /record 14 was written as seq 15/);
  });

  it('a cut tail: from the store\'s own counter; with the counter fixed too, only from the off-host copy of the checkpoints', async () => {
    const cut = tampered((d) => d.exec('DELETE FROM audit WHERE seq >= 25'));
    const r = await assertBroken(cut, 'truncated', 25);
    assert.match(r.firstBad!.message, /handed out seq numbers up to 33/);
    const hidden = tampered((d) => { d.exec('DELETE FROM audit WHERE seq >= 25'); d.exec("UPDATE sqlite_sequence SET seq = 24 WHERE name = 'audit'"); });
    // What the host alone can say: nothing is wrong. This is why checkpoints must leave the host.
    const local = await verify(hidden);
    assert.equal(local.code, 0, JSON.stringify(local.report));
    const offHost = join(dir, 'offhost.jsonl');
    writeFileSync(offHost, `${exported}\n`);
    const r2 = await assertBroken(hidden, 'truncated', 25, '--checkpoints', offHost);
    assert.match(r2.firstBad!.message, /off-host checkpoint on line 30 covers records up to 29/);
    // Bare compact JWS lines, on stdin.
    const jws = exported.split('\n').map((l) => JSON.parse(l) as { event: string; detail?: { jws: string } }).filter((x) => x.event === 'audit.checkpoint').map((x) => x.detail!.jws);
    const bare = await broker(['audit', 'verify', '--db', hidden, '--keys', jwksFile, '--checkpoints', '-', '--json'], {}, { input: `${jws.join('\n')}\n` });
    assert.equal(bare.code, EXIT_NO, bare.stdout);
    assert.deepEqual(((JSON.parse(bare.stdout) as Report).firstBad)?.seq, 25);
    // The intact store agrees with its own off-host copy.
    assert.equal((await verify(fixture, '--checkpoints', offHost)).code, 0);
  });

  it('dropped triggers (nothing else changed)', async () => {
    const db = tampered((d) => d.exec('DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;'), false);
    const { code, report } = await verify(db);
    assert.equal(code, EXIT_NO);
    assert.equal(report.firstBad, null);
    assert.deepEqual(report.problems.map((p) => [p.kind, p.seq]), [['triggers_missing', null], ['triggers_missing', null]]);
    // A trigger replaced by one that lets edits through is as good as dropped.
    const noop = tampered((d) => d.exec('DROP TRIGGER audit_no_update; CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT 1; END;'), false);
    assert.deepEqual((await verify(noop)).report.problems.map((p) => p.message.split(' ')[3]), ['audit_no_update']);
  });

  it('a checkpoint signed by an unknown key, and one with a bad signature (the chain itself intact)', async () => {
    const forge = async (kid: string): Promise<string> => {
      const path = join(dir, `forged-${kid}.db`);
      copyFileSync(fixture, path);
      const store = new SqliteStore(path);
      const head = store.auditLog.head()!;
      const { privateKey } = await generateKeyPair('ES256');
      const jws = await new CompactSign(new TextEncoder().encode(JSON.stringify({ seq: head.seq, head: head.hash, at: new Date().toISOString(), count: head.seq })))
        .setProtectedHeader({ alg: 'ES256', kid, typ: 'broker-audit-checkpoint+json' }).sign(privateKey);
      await store.auditLog.append({ event: 'audit.checkpoint', decision: 'signed', detail: { jws, seq: head.seq, head: head.hash, count: head.seq } });
      await store.close();
      return path;
    };
    const unknown = await assertBroken(await forge('mallory'), 'unknown_kid', 34);
    assert.match(unknown.firstBad!.message, /key "mallory", which is not among the audit keys/);
    const bad = await assertBroken(await forge(KID), 'bad_signature', 34);
    assert.match(bad.firstBad!.message, /signature does not verify with key audit-test-1/);
    // An off-host copy with a bad signature is reported too (and proves nothing).
    const lines = exported.split('\n');
    const line30 = JSON.parse(lines[29]!) as { detail: { jws: string } };
    const [h, p, s] = line30.detail.jws.split('.');
    line30.detail.jws = `${h}.${p}.${s!.startsWith('A') ? `B${s!.slice(1)}` : `A${s!.slice(1)}`}`;
    const badCopy = join(dir, 'bad-copy.jsonl');
    writeFileSync(badCopy, JSON.stringify(line30));
    await assertBroken(fixture, 'bad_signature', 30, '--checkpoints', badCopy);
  });
});

describe('broker audit verify on a large store: two halves at once', () => {
  // What the CLI does from 200,000 records on, here from 10: the same answers as one walk.
  const both = async (path: string) => {
    const keys = await AuditKeySet.of([key.publicJwk]);
    const reader = SqliteAuditReader.open(path);
    try {
      const one = await verifyAuditLog(reader.source, { keys });
      const two = await verifyAuditLog(reader.source, { keys, walker: parallelWalker(path, reader.source, reader.lastSeq(), [key.publicJwk], 10) });
      return { one, two };
    } finally { reader.close(); }
  };
  it('intact, a break in the first half, a break in the second, a recomputed chain across the middle', async () => {
    for (const [path, first] of [
      [fixture, null],
      [tampered((d) => d.exec("UPDATE audit SET reason = 'x' WHERE seq = 8")), ['edited', 8]],
      [tampered((d) => d.exec("UPDATE audit SET reason = 'x' WHERE seq = 27")), ['edited', 27]],
      [tampered((d) => { d.exec("UPDATE audit SET reason = 'x' WHERE seq = 14"); rechain(d, 14); }), ['rewritten', 12]],
      [tampered((d) => d.exec('DELETE FROM audit WHERE seq = 17')), ['missing', 17]],
    ] as [string, [string, number] | null][]) {
      const { one, two } = await both(path);
      assert.deepEqual(two, one, path);
      assert.deepEqual(one.firstBad && [one.firstBad.kind, one.firstBad.seq], first, path);
    }
  });
});

describe('broker audit verify: a store from before seq was hashed', () => {
  it('old (v1) and new (v2) records verify in one chain; an edit of an old record and a downgrade of a new one are caught', async () => {
    const path = join(dir, 'old.db');
    const db = new DatabaseSync(path);
    db.exec(`CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, event TEXT NOT NULL, decision TEXT NOT NULL,
      developer TEXT, template TEXT, session_id TEXT, reason TEXT, access_key_id TEXT, role_session_name TEXT, expiration TEXT,
      detail TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, vault_accessor TEXT)`);
    let prev = '0'.repeat(64);
    for (const dev of ['a@example.com', 'b@example.com']) {
      const at = '2026-11-01T00:00:00.000Z';
      const hash = createHash('sha256').update(JSON.stringify([prev, at, 'login', 'allowed', dev, null, null, null, null, null, null, null])).digest('hex');
      db.prepare('INSERT INTO audit (at, event, decision, developer, prev_hash, hash) VALUES (?,?,?,?,?,?)').run(at, 'login', 'allowed', dev, prev, hash);
      prev = hash;
    }
    db.close();
    const store = new SqliteStore(path);
    await store.auditLog.append({ event: 'login', decision: 'allowed', developer: 'c@example.com' });
    await store.auditLog.append({ event: 'login', decision: 'allowed', developer: 'd@example.com' });
    await store.close();
    const raw = new DatabaseSync(path, { readOnly: true });
    assert.deepEqual((raw.prepare('SELECT hash_version FROM audit ORDER BY seq').all() as { hash_version: number }[]).map((r) => r.hash_version), [1, 1, 2, 2]);
    raw.close();
    const ok = await broker(['audit', 'verify', '--db', path, '--json'], {});
    assert.equal(ok.code, 0, ok.stdout);
    const copy = (attack: string) => {
      const p = join(dir, `old-${++n}.db`);
      copyFileSync(path, p);
      const d = new DatabaseSync(p);
      d.exec(`DROP TRIGGER audit_no_update; ${attack}; ${'CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit\n  BEGIN SELECT RAISE(ABORT, \'audit log is append-only\'); END'}`);
      d.close();
      return p;
    };
    const edited = await broker(['audit', 'verify', '--db', copy("UPDATE audit SET developer = 'x@example.com' WHERE seq = 1"), '--json'], {});
    assert.equal(edited.code, EXIT_NO);
    assert.deepEqual(((JSON.parse(edited.stdout) as Report).firstBad)?.seq, 1);
    const down = await broker(['audit', 'verify', '--db', copy('UPDATE audit SET hash_version = 1 WHERE seq = 4'), '--json'], {});
    assert.equal(down.code, EXIT_NO);
    assert.deepEqual([((JSON.parse(down.stdout) as Report).firstBad)?.kind, ((JSON.parse(down.stdout) as Report).firstBad)?.seq], ['edited', 4]);
  });
});

describe('the service: checkpoints, the start-up check of the tail, --accept-broken-audit', () => {
  const configOf = (db: string, extra: Record<string, unknown> = {}) => ({
    store: { sqlite: db },
    aws: { region: 'us-east-1', stsEndpoint: 'http://127.0.0.1:9', iamEndpoint: 'http://127.0.0.1:9', checkTrustAtStartup: false },
    audit: { checkpoints: { everyRecords: 5, everySeconds: 3600 }, signingKeys: [{ file: keyFile }] },
    ...extra,
  });
  const service = (db: string, args: string[] = []) => startBrokerService({ issuer: 'http://127.0.0.1:9/unused', stsEndpoint: 'http://127.0.0.1:9', iamEndpoint: 'http://127.0.0.1:9', extra: configOf(db), args });
  /** `broker server` run to its end (it refuses to start), with the config the service helper writes. */
  const refusedStart = async (db: string) => {
    const cfg = join(dir, `refused-${++n}.yaml`);
    writeFileSync(cfg, stringify({
      listen: { host: '127.0.0.1', port: 0 }, policiesDir: POLICIES_DIR,
      oidc: { issuer: 'http://127.0.0.1:9/unused', audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli', allowInsecureHttp: true },
      tokens: { signingKeys: 'ephemeral' }, ...configOf(db),
    }));
    return broker(['server', '--config', cfg], {}, { timeoutMs: 30_000 });
  };
  const svcs: { stop(): Promise<void> }[] = [];
  after(async () => { for (const s of svcs) await s.stop(); });

  it('on an intact store: serves the audit JWKS, writes checkpoints (at start, every N records, at stop), verifiable on the live store', async () => {
    const db = join(dir, 'live.db');
    copyFileSync(fixture, db);
    const svc = await service(db);
    svcs.push(svc);
    const jwks = await (await fetch(`${svc.url}/.well-known/audit-jwks.json`)).json() as { keys: JWK[] };
    assert.deepEqual(jwks.keys.map((k) => [k.kid, k.kty, k.crv, 'd' in k]), [[KID, 'EC', 'P-256', false]]);
    assert.match(svc.log(), /audit log verified since the last checkpoint/);
    // The tail 31–33 is covered at once after start.
    const served = join(dir, 'served-jwks.json');
    writeFileSync(served, JSON.stringify(jwks));
    let live: Awaited<ReturnType<typeof verify>> | undefined;
    for (let i = 0; i < 50; i++) {
      live = await verify(db, '--keys', served);
      if (live.report.checkpoints.inStore === 6) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(live!.code, 0, JSON.stringify(live!.report));
    assert.equal(live!.report.checkpoints.inStore, 6, 'the tail covered while the service runs (read-only open of a live store)');
    await svc.stop();
    const d = new DatabaseSync(db, { readOnly: true });
    const last = d.prepare('SELECT event, detail FROM audit ORDER BY seq DESC LIMIT 1').get() as { event: string; detail: string };
    d.close();
    assert.equal(last.event, 'audit.checkpoint', 'a checkpoint over everything at stop');
    assert.equal((await verify(db)).code, 0);
  });

  it('every N records: the checkpointer writes one every everyRecords records', async () => {
    const path = join(dir, 'every.db');
    const store = new SqliteStore(path);
    const cp = new AuditCheckpointer({ log: store.auditLog, key, everyRecords: 5, everySeconds: 3600, logger: silent, now: Date.now });
    cp.start();
    for (let i = 0; i < 12; i++) await store.auditLog.append({ event: 'login', decision: 'allowed', developer: `e${i}@example.com` });
    await new Promise((r) => setTimeout(r, 200));
    await cp.stop();
    await store.close();
    const d = new DatabaseSync(path, { readOnly: true });
    const cps = (d.prepare("SELECT detail FROM audit WHERE event = 'audit.checkpoint' ORDER BY seq").all() as { detail: string }[]).map((r) => (JSON.parse(r.detail) as { seq: number }).seq);
    d.close();
    // Signing is slower than this burst, so a checkpoint may cover more than 5; none is skipped and the last covers all 12.
    assert.ok(cps.length >= 2, `at least two: ${cps.join(',')}`);
    assert.ok(cps.at(-1)! >= 12, `the last covers every record: ${cps.join(',')}`);
    assert.equal((await verify(path)).code, 0);
  });

  it('refuses to start on a chain broken since the last checkpoint, naming the seq and the fix; starts with --accept-broken-audit, which it records', async () => {
    const db = tampered((d) => d.exec("UPDATE audit SET developer = 'mallory@example.com' WHERE seq = 32"));
    const refused = await refusedStart(db);
    assert.equal(refused.code, EXIT_CODES.audit_unavailable, refused.stderr);
    assert.match(refused.stderr, /the audit log is broken \(edited at seq 32\)/);
    assert.match(refused.stderr, /--accept-broken-audit/);
    assert.match(refused.stderr, /broker audit verify --db/);
    assert.doesNotMatch(refused.stderr, /\n\s+at /);
    // A tail cut since the last checkpoint, too (the store's counter).
    const cut = await refusedStart(tampered((d) => d.exec('DELETE FROM audit WHERE seq >= 32')));
    assert.equal(cut.code, EXIT_CODES.audit_unavailable);
    assert.match(cut.stderr, /truncated at seq 32/);

    const svc = await service(db, ['--accept-broken-audit']);
    svcs.push(svc);
    await svc.stop();
    const d = new DatabaseSync(db, { readOnly: true });
    const accepted = d.prepare("SELECT seq, decision, reason, detail FROM audit WHERE event = 'audit.broken'").all() as { seq: number; decision: string; reason: string; detail: string }[];
    d.close();
    assert.equal(accepted.length, 1);
    assert.equal(accepted[0]!.seq, 34);
    assert.match(accepted[0]!.reason, /--accept-broken-audit: record 32 does not match its hash/);
    assert.deepEqual((JSON.parse(accepted[0]!.detail) as { problems: { kind: string; seq: number }[] }).problems.map((p) => [p.kind, p.seq]), [['edited', 32]]);
    // The break stays in the history (verify still says so), and the next start goes on from the checkpoint after it.
    await assertBroken(db, 'edited', 32);
    const again = await service(db);
    svcs.push(again);
    await again.stop();
  });
});

