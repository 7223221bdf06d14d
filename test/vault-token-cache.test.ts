/**
 * The daemon's Vault token cache on its own: a fake upstream (the broker service's fresh-token route
 * and Vault's renew-self) that counts what it is asked, and a clock the test moves. The real-peer
 * test (daemon-vault.test.ts, OpenBao) runs the same code end to end.
 */
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import type { SessionView, VaultTokenGrant } from '../broker/wire/service-api.js';
import { VaultTokenCache, type VaultUpstream } from '../broker/daemon/vault-token-cache.js';
import { BrokerError } from '../broker/errors.js';
import type { RenewedVaultToken, RenewVaultTokenOptions } from '../broker/client/vault-renew.js';

const MIN = 60_000;
const T0 = Date.parse('2026-11-22T12:00:00Z');
const TASK = 'db-migrate';

function session(id: string, endsAt = T0 + 4 * 60 * MIN): SessionView {
  return {
    id, template: TASK, params: {}, reason: '', agent: 'claude', roleSessionName: `alice.${TASK}.${id}`, region: null,
    vault: { address: 'http://127.0.0.1:8200', namespace: null, policies: ['db-migrate'] },
    createdAt: new Date(T0).toISOString(), expiresAt: new Date(endsAt).toISOString(),
  };
}

let serial = 0;
function grant(now: number, o: { ttlMin?: number; renewable?: boolean; numUses?: number; maxMin?: number } = {}): VaultTokenGrant {
  serial++;
  const ttl = (o.ttlMin ?? 30) * 60;
  return {
    token: `hvs.test-token-${serial}`, accessor: `accessor-${serial}`, policies: ['db-migrate'], ttlSeconds: ttl,
    expiresAt: new Date(now + ttl * 1000).toISOString(), maxExpiresAt: new Date(now + (o.maxMin ?? 240) * MIN).toISOString(),
    renewable: o.renewable ?? true, numUses: o.numUses ?? 0, address: 'http://127.0.0.1:8200',
  };
}

type Answer<T> = (() => T | Error) | undefined;

class FakeVaultUpstream implements VaultUpstream {
  readonly sessions = new Map<string, SessionView>();
  renewCalls = 0;
  freshCalls = 0;
  renewWith: Answer<RenewedVaultToken>;
  freshWith: Answer<{ session: SessionView; vault: VaultTokenGrant }>;
  /** An open fresh-token request, when freshWith is unset: answered by the test. */
  readonly pending: { resolve(v: { session: SessionView; vault: VaultTokenGrant }): void; reject(e: unknown): void }[] = [];

  findSession(template: string): Promise<SessionView | undefined> {
    return Promise.resolve(this.sessions.get(template));
  }
  freshToken(): Promise<{ session: SessionView; vault: VaultTokenGrant }> {
    this.freshCalls++;
    if (!this.freshWith) return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
    const r = this.freshWith();
    return r instanceof Error ? Promise.reject(r) : Promise.resolve(r);
  }
  renew(_o: RenewVaultTokenOptions): Promise<RenewedVaultToken> {
    this.renewCalls++;
    const r = this.renewWith?.() ?? new Error('renew not expected');
    return r instanceof Error ? Promise.reject(r) : Promise.resolve(r);
  }
}

async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

function setup(t: TestContext) {
  let now = T0;
  const upstream = new FakeVaultUpstream();
  const warnings: string[] = [];
  const log = { info: () => {}, warn: (_o: object, msg?: string) => { warnings.push(msg ?? ''); } };
  // The cache's own 15-second tick is left out (tickMs far away): the test calls tick() itself.
  const cache = new VaultTokenCache({ upstream, log, now: () => now, random: () => 0.5, tickMs: 2 ** 30 });
  t.after(() => cache.close());
  upstream.sessions.set(TASK, session('s1'));
  return { cache, upstream, warnings, now: () => now, set: (t1: number) => { now = t1; } };
}

describe('Vault token cache', () => {
  it('renews a renewable token in place when a third of its TTL is left: same token, later expiry', async (t) => {
    const { cache, upstream, now, set } = setup(t);
    const g = grant(now());
    cache.put(session('s1'), g);
    set(T0 + 19 * MIN);
    assert.equal((await cache.get(TASK)).grant.token, g.token);
    assert.equal(upstream.renewCalls, 0, 'not due with more than a third left');
    set(T0 + 20 * MIN);
    upstream.renewWith = () => ({ ttlSeconds: 1800, expiresAt: new Date(now() + 30 * MIN), renewable: true });
    assert.equal((await cache.get(TASK)).grant.token, g.token, 'served while renewing');
    await flush();
    assert.equal(upstream.renewCalls, 1);
    assert.equal(upstream.freshCalls, 0);
    const after = await cache.get(TASK);
    assert.equal(after.grant.token, g.token, 'the agent keeps its token');
    assert.equal(after.grant.expiresAt, new Date(T0 + 50 * MIN).toISOString());
  });

  for (const [label, opts, renewWith] of [
    ['a use-limited token (numUses > 0: renewing would spend a use)', { numUses: 5 }, undefined],
    ['a token that is not renewable', { renewable: false }, undefined],
    ['a token whose renewal fails (revoked, capped)', {}, () => new BrokerError('upstream_error', 'permission denied')],
  ] as const) {
    it(`fetches a fresh token instead of renewing ${label}`, async (t) => {
      const { cache, upstream, now, set } = setup(t);
      const g = grant(now(), opts);
      cache.put(session('s1'), g);
      if (renewWith) upstream.renewWith = renewWith;
      const fresh = grant(T0 + 20 * MIN);
      upstream.freshWith = () => ({ session: session('s1'), vault: fresh });
      set(T0 + 20 * MIN);
      await cache.get(TASK);
      await flush();
      assert.equal(upstream.renewCalls, renewWith ? 1 : 0, renewWith ? 'renewal tried first' : 'never renewed');
      assert.equal(upstream.freshCalls, 1);
      assert.equal((await cache.get(TASK)).grant.token, fresh.token);
    });
  }

  it('while Vault and the service are down: serves the held token, backs off, logs once; after expiry fails fast', async (t) => {
    const { cache, upstream, warnings, now, set } = setup(t);
    const g = grant(now());
    cache.put(session('s1'), g);
    upstream.renewWith = () => new BrokerError('upstream_unavailable', 'cannot reach Vault');
    upstream.freshWith = () => new BrokerError('upstream_unavailable', 'cannot reach the broker service at http://127.0.0.1:1');

    set(T0 + 20 * MIN);
    assert.equal((await cache.get(TASK)).grant.token, g.token);
    await flush();
    assert.equal(upstream.freshCalls, 1);
    // random() = 0.5: the next attempt is 0.5 s later, then 1 s, 2 s …
    for (let i = 0; i < 5; i++) assert.equal((await cache.get(TASK)).grant.token, g.token);
    cache.tick();
    await flush();
    assert.equal(upstream.freshCalls, 1, 'not before the back-off');
    set(now() + 500);
    cache.tick();
    await flush();
    assert.equal(upstream.freshCalls, 2);
    set(now() + 999);
    cache.tick();
    await flush();
    assert.equal(upstream.freshCalls, 2);
    set(now() + 1);
    cache.tick();
    await flush();
    assert.equal(upstream.freshCalls, 3);
    assert.equal(warnings.length, 1, 'logged once');

    // Expired. The first call finds an attempt due; after it, calls fail fast until the next is.
    set(T0 + 31 * MIN);
    await assert.rejects(cache.get(TASK), (e: BrokerError) => e.code === 'upstream_unavailable' && /^no valid Vault token for "db-migrate": /.test(e.message));
    const attempts = upstream.freshCalls;
    for (let i = 0; i < 20; i++) {
      await assert.rejects(cache.get(TASK), (e: BrokerError) => e.code === 'upstream_unavailable');
    }
    assert.equal(upstream.freshCalls, attempts, 'no attempt per call');
    assert.equal(warnings.length, 1);

    // Back: the next due attempt brings a fresh token.
    const fresh = grant(T0 + 40 * MIN);
    upstream.freshWith = () => ({ session: session('s1'), vault: fresh });
    set(T0 + 40 * MIN);
    assert.equal((await cache.get(TASK)).grant.token, fresh.token);
  });

  it('an old fetch that ends after its entry was replaced leaves the replacement alone', async (t) => {
    const { cache, upstream, now, set } = setup(t);
    cache.put(session('s1'), grant(now(), { renewable: false }));
    set(T0 + 20 * MIN);
    await cache.get(TASK);
    await flush();
    assert.equal(upstream.pending.length, 1, 'a fresh token for s1 is being fetched');

    upstream.sessions.set(TASK, session('s2'));
    const replacement = grant(now());
    cache.put(session('s2'), replacement);
    upstream.pending.shift()!.reject(new BrokerError('conflict', 'task session s1 has ended'));
    await flush();
    assert.deepEqual(cache.status().map((s) => s.accessor), [replacement.accessor], 's2 is still held');
    const got = await cache.get(TASK);
    assert.equal(got.grant.token, replacement.token);
    assert.equal(got.session.id, 's2');
  });

  it('a caller waiting on a replaced entry gets the replacement, not "the task session ended"', async (t) => {
    const { cache, upstream, now, set } = setup(t);
    cache.put(session('s1'), grant(now(), { renewable: false }));
    set(T0 + 30 * MIN); // expired: callers wait for a fresh one
    const waiting = cache.get(TASK);
    await flush();
    assert.equal(upstream.pending.length, 1);
    cache.drop(TASK); // broker exec with another agent
    const warm = cache.get(TASK);
    await flush();
    assert.equal(upstream.pending.length, 2);
    const [old, current] = upstream.pending.splice(0, 2);
    const fresh = grant(now());
    current!.resolve({ session: session('s1'), vault: fresh });
    assert.equal((await warm).grant.token, fresh.token);
    old!.reject(new BrokerError('conflict', 'superseded'));
    assert.equal((await waiting).grant.token, fresh.token);
  });
});
