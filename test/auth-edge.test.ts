/**
 * The pieces of the unauthenticated edge on their own, with their clocks frozen: the DPoP replay
 * store (how long a proof's jti is kept, and what happens when it is full), the token buckets of
 * /v1/auth/*, and the aggregate audit of refusals (windows, counts, the key bound) on a real SQLite
 * store. The same pieces wired into the service are in test/server-api.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { SignJWT } from 'jose';
import { generateDpopKey } from '../broker/client/dpop-key.js';
import { BrokerError } from '../broker/errors.js';
import { DpopVerifier, MAX_PROOF_AGE_SECONDS } from '../broker/identity/dpop-verifier.js';
import { createLogger } from '../broker/log.js';
import { DenialAudit } from '../broker/server/denial-audit.js';
import { addressKey, AuthRateLimiter } from '../broker/server/rate-limit.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';

const URL_ = 'https://broker.example.com/v1/auth/refresh';
const TOLERANCE = 30;

/** A proof with a chosen `iat` (seconds) and `jti`. */
async function proofAt(key: Awaited<ReturnType<typeof generateDpopKey>>['key'], iat: number, jti = crypto.randomUUID()): Promise<string> {
  return new SignJWT({ htm: 'POST', htu: URL_ }).setProtectedHeader({ typ: 'dpop+jwt', alg: 'ES256', jwk: key.publicJwk })
    .setJti(jti).setIssuedAt(iat).sign(key.privateKey);
}

const code = (c: string, message?: RegExp) => (e: unknown) => e instanceof BrokerError && e.code === c && (!message || message.test(e.message));

describe('DPoP replay store', () => {
  it('keeps a jti until iat + max age + tolerance: a replay just before that edge is refused as used, just after as too old', async () => {
    const { key } = await generateDpopKey();
    let now = Date.UTC(2026, 0, 1, 12, 0, 0);
    const dpop = new DpopVerifier({ clockToleranceSeconds: TOLERANCE, now: () => now });
    // The latest proof still accepted: dated `tolerance` into the future.
    const iat = now / 1000 + TOLERANCE;
    const proof = await proofAt(key, iat);
    assert.equal(typeof await dpop.verify(proof, { method: 'POST', url: URL_ }), 'string');
    // The proof passes the age check up to the end of second iat + age + tolerance.
    const edge = (iat + MAX_PROOF_AGE_SECONDS + TOLERANCE) * 1000;
    now = edge + 999;
    await assert.rejects(dpop.verify(proof, { method: 'POST', url: URL_ }), code('unauthenticated', /already used/), 'a replay at the last valid millisecond');
    // A fresh proof of the same age passes that check at that moment: it is the replay store that refuses the first.
    assert.equal(typeof await dpop.verify(await proofAt(key, iat), { method: 'POST', url: URL_ }), 'string');
    now = edge + 1000;
    await assert.rejects(dpop.verify(proof, { method: 'POST', url: URL_ }), code('unauthenticated', /the DPoP proof is invalid/), 'past the edge: too old');
  });

  it('is bounded: when full it refuses new proofs (429 with a retry time) instead of forgetting one, and takes them again once old ones expire', async () => {
    const { key } = await generateDpopKey();
    let now = Date.UTC(2026, 0, 1, 12, 0, 0);
    const dpop = new DpopVerifier({ clockToleranceSeconds: TOLERANCE, maxRemembered: 3, now: () => now });
    const proofs = await Promise.all([0, 1, 2].map(() => proofAt(key, now / 1000)));
    for (const p of proofs) await dpop.verify(p, { method: 'POST', url: URL_ });
    assert.equal(dpop.remembered, 3);
    let full: unknown;
    await dpop.verify(await proofAt(key, now / 1000), { method: 'POST', url: URL_ }).catch((e: unknown) => { full = e; });
    assert.ok(full instanceof BrokerError && full.code === 'rate_limited', String(full));
    assert.ok(full.retryAfterSeconds! >= 1 && full.retryAfterSeconds! <= MAX_PROOF_AGE_SECONDS + TOLERANCE + 11, `retry in ${full.retryAfterSeconds}s`);
    // Still remembered (not forgotten to make room): a replay of one is refused as used.
    await assert.rejects(dpop.verify(proofs[0]!, { method: 'POST', url: URL_ }), code('unauthenticated', /already used/));
    // Once they are past the age check, their bucket goes whole and there is room again.
    now += (MAX_PROOF_AGE_SECONDS + TOLERANCE + 11) * 1000;
    assert.equal(typeof await dpop.verify(await proofAt(key, now / 1000), { method: 'POST', url: URL_ }), 'string');
    assert.equal(dpop.remembered, 1);
  });
});

describe('token buckets of /v1/auth/*', () => {
  it('per address: the burst, then one request per refill interval; addresses apart; a global bucket over all', () => {
    let now = 0;
    const limits = new AuthRateLimiter({ perAddress: { burst: 3, perMinute: 60 }, global: { burst: 5, perMinute: 1 }, maxAddresses: 100 }, () => now);
    for (let i = 0; i < 3; i++) assert.deepEqual(limits.take('10.0.0.1'), { ok: true });
    assert.deepEqual(limits.take('10.0.0.1'), { ok: false, scope: 'address', retryAfterSeconds: 1 });
    now += 1000;
    assert.deepEqual(limits.take('10.0.0.1'), { ok: true }, 'one token back after a second (60 per minute)');
    assert.deepEqual(limits.take('10.0.0.2'), { ok: true });
    assert.deepEqual(limits.take('10.0.0.3'), { ok: false, scope: 'global', retryAfterSeconds: 59 }, 'five taken in all (a 60th of a token back since)');
  });

  it('keeps at most maxAddresses buckets, dropping the least recently used', () => {
    const limits = new AuthRateLimiter({ perAddress: { burst: 1, perMinute: 1 }, global: { burst: 1_000_000, perMinute: 1 }, maxAddresses: 100 }, () => 0);
    for (let i = 0; i < 1000; i++) limits.take(`10.0.${i >> 8}.${i & 255}`);
    assert.equal(limits.trackedAddresses, 100);
  });

  it('keys IPv6 addresses by their /64, IPv4 (also IPv4-mapped) by the address', () => {
    assert.equal(addressKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
    assert.equal(addressKey('2001:0db8:0001:0002:ffff:ffff:ffff:ffff'), '2001:db8:1:2::/64');
    assert.equal(addressKey('2001:db8::1'), '2001:db8:0:0::/64');
    assert.equal(addressKey('::1'), '0:0:0:0::/64');
    assert.equal(addressKey('::ffff:192.0.2.7'), '192.0.2.7');
    assert.equal(addressKey('192.0.2.7'), '192.0.2.7');
  });
});

describe('aggregate audit of refusals nobody authenticated owns', () => {
  const dir = mkdtempSync(join(tmpdir(), 'broker-denials-'));
  const stores: SqliteStore[] = [];
  after(async () => { for (const s of stores) await s.close(); });
  const setup = (maxKeys: number) => {
    const store = new SqliteStore(join(dir, `${crypto.randomUUID()}.db`));
    stores.push(store);
    let now = Date.UTC(2026, 0, 1, 12, 0, 0);
    const audit = new DenialAudit({ auditLog: store.auditLog, log: createLogger({ level: 'silent' }), windowMs: 60_000, maxKeys, now: () => now });
    return { store, audit, advance: (ms: number) => { now += ms; }, rows: () => store.auditLog.records(0, 10_000) };
  };

  it('per key and window: the first at once with count 1, the rest as one record with their count when the window ends', async () => {
    const { audit, advance, rows } = setup(10);
    const d = { event: 'login' as const, reason: 'ID token rejected: malformed', address: '10.0.0.1' };
    await audit.record(d);
    assert.deepEqual((await rows()).map((r) => r.detail?.count), [1], 'visible at once');
    for (let i = 0; i < 99; i++) await audit.record(d);
    assert.equal((await rows()).length, 1, 'counted, not written');
    advance(30_000);
    await audit.flush();
    assert.equal((await rows()).length, 1, 'the window has not ended');
    advance(30_000);
    await audit.flush();
    const r = await rows();
    assert.deepEqual(r.map((x) => x.detail?.count), [1, 99]);
    assert.deepEqual([r[1]!.event, r[1]!.decision, r[1]!.reason, r[1]!.detail?.address], ['login', 'denied', d.reason, '10.0.0.1']);
    await audit.record(d);
    assert.equal((await rows()).length, 3, 'a new window: its first is written at once');
  });

  it('N refusals from many addresses: a bounded number of rows, counts adding up to N, overflow folded into *', async () => {
    const { audit, rows, store } = setup(5);
    const N = 1000;
    for (let i = 0; i < N; i++) {
      await audit.record({ event: i % 2 ? 'token.refresh' : 'login', reason: i % 3 ? 'request body is invalid' : 'rate limited (per address)', address: `10.1.${i % 200}.1` });
    }
    assert.ok(audit.keys <= 5 + 4, `${audit.keys} keys in memory`);
    await audit.stop();
    const r = await rows();
    assert.equal(r.reduce((n, x) => n + Number(x.detail?.count), 0), N);
    assert.ok(r.length <= 2 * (5 + 4), `${r.length} rows for ${N} refusals`);
    assert.ok(r.some((x) => x.detail?.address === '*'));
    assert.equal(await store.auditLog.verify(), null);
  });

  it('keys a refusal by developer when a verified token names one', async () => {
    const { audit, rows } = setup(10);
    for (const address of ['10.0.0.1', '10.0.0.2', '10.0.0.3']) {
      await audit.record({ event: 'token.refresh', reason: 'DPoP proof rejected: the DPoP proof is invalid', developer: 'alice@example.com', address });
    }
    await audit.stop();
    const r = await rows();
    assert.deepEqual(r.map((x) => [x.developer, x.detail?.count, x.detail?.address]), [['alice@example.com', 1, undefined], ['alice@example.com', 2, undefined]]);
  });
});
