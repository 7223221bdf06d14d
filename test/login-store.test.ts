/**
 * The store's half of the login lifecycle, on SQLite files: refresh-token families (rotation, reuse
 * detection, revocation by logout and by an admin offboarding a developer, pruning), the ID tokens
 * already exchanged, and a store written before these tables existed opening unchanged.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, describe, it } from 'node:test';
import { BrokerTokens, loadSigningKeys } from '../broker/identity/broker-tokens.js';
import { BrokerLogins } from '../broker/identity/logins.js';
import type { AuditEvent } from '../broker/store/audit-event.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';

const dir = mkdtempSync(join(tmpdir(), 'broker-login-store-'));
const stores: SqliteStore[] = [];
after(async () => { for (const s of stores) await s.close().catch(() => undefined); });

function open(path = join(dir, `${randomUUID()}.db`), now: () => number = Date.now): SqliteStore {
  const s = new SqliteStore(path, { now });
  stores.push(s);
  return s;
}

const HOUR = 3600_000;
const event = (e: Partial<AuditEvent> & Pick<AuditEvent, 'event' | 'decision'>): AuditEvent => ({ developer: 'alice@example.com', ...e });
const audit = {
  rotated: event({ event: 'token.refresh', decision: 'allowed' }),
  reuse: event({ event: 'login.revoke', decision: 'revoked', reason: 'reuse of a spent refresh token' }),
  ended: event({ event: 'token.refresh', decision: 'denied', reason: 'its login has ended' }),
};

function newFamily(developer = 'alice@example.com', expiresAt = Date.now() + HOUR) {
  return { id: randomUUID(), developer, email: developer, groups: ['developers'], jkt: 'jkt-of-the-device-key', createdAt: Date.now(), expiresAt };
}

describe('refresh-token families (SQLite)', () => {
  it('rotates the current token once; the spent one presented again revokes the family, in the same transaction as its record', async () => {
    const store = open();
    const f = newFamily();
    await store.refreshTokenFamilies.start(f, { jti: 'j0', issuedAt: Date.now() }, event({ event: 'login', decision: 'allowed' }));
    const r1 = await store.refreshTokenFamilies.rotate(f.id, 'j0', { jti: 'j1', issuedAt: Date.now() }, audit);
    assert.equal(r1.kind, 'rotated');
    assert.equal(r1.kind === 'rotated' && r1.family.generation, 1);
    const r2 = await store.refreshTokenFamilies.rotate(f.id, 'j1', { jti: 'j2', issuedAt: Date.now() }, audit);
    assert.equal(r2.kind === 'rotated' && r2.family.generation, 2);
    const reuse = await store.refreshTokenFamilies.rotate(f.id, 'j0', { jti: 'j3', issuedAt: Date.now() }, audit);
    assert.equal(reuse.kind, 'reuse-detected');
    const family = await store.refreshTokenFamilies.get(f.id);
    assert.ok(family?.revokedAt, 'revoked');
    assert.equal(family.revokeReason, 'reuse of a spent refresh token');
    assert.equal(family.expiresAt, f.expiresAt, 'the end fixed at login');
    // The current token (j2) is of a revoked family now: ended, nothing issued.
    assert.equal((await store.refreshTokenFamilies.rotate(f.id, 'j2', { jti: 'j4', issuedAt: Date.now() }, audit)).kind, 'family-ended');
    // A jti of another family, or none at all: unknown.
    assert.equal((await store.refreshTokenFamilies.rotate(randomUUID(), 'j2', { jti: 'j5', issuedAt: Date.now() }, audit)).kind, 'unknown');
    assert.equal((await store.refreshTokenFamilies.rotate(f.id, 'never-issued', { jti: 'j6', issuedAt: Date.now() }, audit)).kind, 'unknown');
    const trail = (await store.auditLog.records()).map((r) => `${r.event}:${r.decision}`);
    assert.deepEqual(trail, ['login:allowed', 'token.refresh:allowed', 'token.refresh:allowed', 'login.revoke:revoked', 'token.refresh:denied']);
    assert.equal(await store.auditLog.verify(), null);
  });

  it('two services on one store presenting the same token: one rotates it, the other is reuse', async () => {
    const path = join(dir, `${randomUUID()}.db`);
    const a = open(path);
    const b = open(path);
    const f = newFamily();
    await a.refreshTokenFamilies.start(f, { jti: 'j0', issuedAt: Date.now() }, event({ event: 'login', decision: 'allowed' }));
    const outcomes = await Promise.all([
      a.refreshTokenFamilies.rotate(f.id, 'j0', { jti: 'ja', issuedAt: Date.now() }, audit),
      b.refreshTokenFamilies.rotate(f.id, 'j0', { jti: 'jb', issuedAt: Date.now() }, audit),
    ]);
    assert.deepEqual(outcomes.map((o) => o.kind).sort(), ['reuse-detected', 'rotated']);
  });

  it('a family past its end buys nothing, and is pruned with its tokens', async () => {
    let now = Date.now();
    const store = open(undefined, () => now);
    const f = newFamily('alice@example.com', now + HOUR);
    await store.refreshTokenFamilies.start(f, { jti: 'j0', issuedAt: now }, event({ event: 'login', decision: 'allowed' }));
    now += HOUR;
    assert.equal((await store.refreshTokenFamilies.rotate(f.id, 'j0', { jti: 'j1', issuedAt: now }, audit)).kind, 'family-ended');
    assert.equal(await store.refreshTokenFamilies.prune(now - 1), 0, 'not before its end');
    assert.equal(await store.refreshTokenFamilies.prune(now + 1), 1);
    assert.equal(await store.refreshTokenFamilies.get(f.id), undefined);
    assert.equal((await store.refreshTokenFamilies.rotate(f.id, 'j0', { jti: 'j2', issuedAt: now }, audit)).kind, 'unknown');
  });

  it('revokeDeveloper (offboarding) revokes every live login of one developer at once, audited once; their tokens buy nothing', async () => {
    const store = open();
    const keys = await loadSigningKeys('ephemeral', dir);
    const tokens = new BrokerTokens(keys, 'https://broker.example.com', { access: 600 });
    const logins = new BrokerLogins({ tokens, families: store.refreshTokenFamilies, auditLog: store.auditLog, refreshTtlSeconds: 3600 });
    const alice = { id: 'alice@example.com', email: 'alice@example.com', groups: ['developers'] };
    const laptop = await logins.login(alice, 'jkt-laptop');
    const desktop = await logins.login(alice, 'jkt-desktop');
    const bob = await logins.login({ id: 'bob@example.com', email: 'bob@example.com', groups: [] }, 'jkt-bob');
    const access = await tokens.verifyAccess(laptop.accessToken);
    assert.equal((await logins.principalOf(access)).id, alice.id);

    assert.equal(await logins.revokeDeveloper('alice@example.com', 'left the company', 'admin@example.com'), 2);
    assert.equal(await logins.revokeDeveloper('alice@example.com', 'left the company'), 0, 'nothing left to revoke');
    for (const [l, jkt] of [[laptop, 'jkt-laptop'], [desktop, 'jkt-desktop']] as const) {
      const claims = await logins.verifyRefreshToken(l.refresh!.token);
      await assert.rejects(logins.refresh(claims, jkt), (e: unknown) => (e as { code?: string }).code === 'unauthenticated' && /this login was revoked \(left the company\)/.test((e as Error).message));
    }
    await assert.rejects(logins.principalOf(access), (e: unknown) => (e as { code?: string }).code === 'unauthenticated', 'the access token is refused too');
    // Bob is untouched.
    assert.equal((await logins.refresh(await logins.verifyRefreshToken(bob.refresh!.token), 'jkt-bob')).principal.id, 'bob@example.com');
    const revocations = (await store.auditLog.records()).filter((r) => r.event === 'login.revoke');
    assert.equal(revocations.length, 1, 'one record for the offboarding');
    assert.deepEqual([revocations[0]!.developer, revocations[0]!.reason, revocations[0]!.detail?.count, revocations[0]!.detail?.by],
      ['alice@example.com', 'left the company', 2, 'admin@example.com']);
    assert.deepEqual((revocations[0]!.detail?.families as string[]).sort(), [laptop.refresh!.familyId, desktop.refresh!.familyId].sort());
    assert.equal(await store.auditLog.verify(), null);
  });
});

describe('ID tokens already exchanged (SQLite)', () => {
  it('remembers a key once until its time, then forgets it (pruned or taken over)', async () => {
    let now = Date.now();
    const store = open(undefined, () => now);
    assert.equal(await store.seenIdTokens.remember('k1', now + 60_000), true);
    assert.equal(await store.seenIdTokens.remember('k1', now + 60_000), false);
    now += 61_000;
    assert.equal(await store.seenIdTokens.remember('k1', now + 60_000), true, 'past its time it is as good as absent');
    assert.equal(await store.seenIdTokens.remember('k2', now + 1000), true);
    now += 2000;
    assert.equal(await store.seenIdTokens.prune(now), 1);
  });
});

describe('a store written before logins were families', () => {
  it('opens, gains the tables, keeps its audit chain, and takes logins', async () => {
    const path = join(dir, 'old.db');
    const first = new SqliteStore(path);
    await first.auditLog.append({ event: 'login', decision: 'allowed', developer: 'alice@example.com' });
    await first.close();
    // What a broker of before this change left: no such tables.
    const db = new DatabaseSync(path);
    db.exec('DROP TABLE refresh_tokens; DROP TABLE refresh_token_families; DROP TABLE seen_id_tokens;');
    db.close();
    const store = open(path);
    assert.equal(await store.auditLog.verify(), null);
    const f = newFamily();
    await store.refreshTokenFamilies.start(f, { jti: 'j0', issuedAt: Date.now() }, event({ event: 'login', decision: 'allowed' }));
    assert.equal((await store.refreshTokenFamilies.get(f.id))?.developer, 'alice@example.com');
    assert.equal(await store.seenIdTokens.remember('k', Date.now() + 1000), true);
    assert.equal((await store.auditLog.records()).length, 2);
  });
});

