/**
 * The daemon's credential cache on its own: a fake upstream whose answers the test releases one by
 * one, a clock the test moves (`now`), and node's mock timers for the cache's own timers, moved with
 * it. The real-peer tests (daemon.test.ts, daemon-clock.test.ts) run the same code end to end; these
 * pin down the orderings that real peers make hard to produce on purpose.
 */
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import type { ProcessCredentials, SessionView } from '../broker/wire/service-api.js';
import { CredentialCache, type CredentialUpstream, type IssuedCredentials } from '../broker/daemon/credential-cache.js';
import { BrokerError } from '../broker/errors.js';

const MIN = 60_000;
const T0 = Date.parse('2026-11-22T12:00:00Z');
const TASK = 'deploy-lambda';

function session(id: string, endsAt = T0 + 4 * 60 * MIN, agent = 'claude'): SessionView {
  return {
    id, template: TASK, params: {}, reason: '', agent, roleSessionName: `alice.${TASK}.${id}`, region: 'us-east-1',
    vault: null, createdAt: new Date(T0).toISOString(), expiresAt: new Date(endsAt).toISOString(),
  };
}

let serial = 0;
function creds(expiresAt: number): ProcessCredentials {
  serial++;
  return {
    Version: 1, AccessKeyId: `ASIATEST${String(serial).padStart(8, '0')}`, SecretAccessKey: `secret-${serial}`,
    SessionToken: `token-${serial}`, Expiration: new Date(expiresAt).toISOString(),
  };
}

interface Pending { sessionId: string; resolve(v: IssuedCredentials): void; reject(e: unknown): void }

/** The broker service as the cache sees it: each issue() waits until the test answers it. */
class FakeUpstream implements CredentialUpstream {
  readonly sessions = new Map<string, SessionView>();
  readonly pending: Pending[] = [];
  issueCalls = 0;
  /** When set, issue() answers at once with this (credentials, or an error to throw). */
  auto: ((sessionId: string) => IssuedCredentials | Error) | undefined;

  findSession(template: string): Promise<SessionView | undefined> {
    return Promise.resolve(this.sessions.get(template));
  }

  issue(sessionId: string): Promise<IssuedCredentials> {
    this.issueCalls++;
    if (this.auto) {
      const r = this.auto(sessionId);
      return r instanceof Error ? Promise.reject(r) : Promise.resolve(r);
    }
    return new Promise((resolve, reject) => this.pending.push({ sessionId, resolve, reject }));
  }

  /** Answers the oldest open issue() with fresh credentials of `lifetimeMs` from `now`. */
  answer(now: number, lifetimeMs = 60 * MIN): ProcessCredentials {
    const p = this.pending.shift();
    assert.ok(p, 'an issue() call is waiting');
    const c = creds(now + lifetimeMs);
    p.resolve({ session: this.sessions.get(TASK) ?? session(p.sessionId), credentials: c });
    return c;
  }
}

class Log {
  readonly lines: { level: string; msg: string }[] = [];
  info = (_o: object, msg?: string) => { this.lines.push({ level: 'info', msg: msg ?? '' }); };
  warn = (_o: object, msg?: string) => { this.lines.push({ level: 'warn', msg: msg ?? '' }); };
  error = (_o: object, msg?: string) => { this.lines.push({ level: 'error', msg: msg ?? '' }); };
  count = (re: RegExp) => this.lines.filter((l) => re.test(l.msg)).length;
}

/** Lets promise chains (fake answers, the cache's own continuations) run. */
async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

function setup(t: TestContext, random = () => 0.5) {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval'] });
  let now = T0;
  const upstream = new FakeUpstream();
  const log = new Log();
  const cache = new CredentialCache({ upstream, log, now: () => now, random, tickMs: 15_000 });
  t.after(() => cache.close());
  return {
    cache, upstream, log,
    now: () => now,
    /** Moves the clock and the timers together, a step at a time, letting each step's work finish. */
    async advance(ms: number, step = 250) {
      for (let left = ms; left > 0; left -= step) {
        const d = Math.min(step, left);
        now += d;
        t.mock.timers.tick(d);
        await flush();
      }
    },
  };
}

describe('credential cache', () => {
  it('refreshes in the background when a third of the lifetime is left, serving from memory meanwhile', async (t) => {
    const { cache, upstream, now, advance } = setup(t);
    upstream.sessions.set(TASK, session('s1'));
    const first = creds(T0 + 60 * MIN);
    cache.put({ session: session('s1'), credentials: first });

    await advance(39 * MIN + 59_000, 60_000);
    assert.equal((await cache.get(TASK)).AccessKeyId, first.AccessKeyId);
    assert.equal(upstream.issueCalls, 0, 'not due before 20 min are left');

    // Due at 40 min: the cache's own timer starts it, without any caller.
    await advance(1_000);
    assert.equal(upstream.issueCalls, 1, 'refresh started at a third of the lifetime');
    assert.equal((await cache.get(TASK)).AccessKeyId, first.AccessKeyId, 'the held ones are served while it runs');
    const second = upstream.answer(now());
    await flush();
    assert.equal((await cache.get(TASK)).AccessKeyId, second.AccessKeyId);
    assert.equal(cache.stats.waitedForUpstream, 0, 'no caller waited');
    assert.equal(upstream.issueCalls, 1);
  });

  it('single flight: 100 concurrent callers wait on one upstream request', async (t) => {
    const { cache, upstream, now } = setup(t);
    upstream.sessions.set(TASK, session('s1'));
    const calls = Array.from({ length: 100 }, () => cache.get(TASK));
    await flush();
    assert.equal(upstream.issueCalls, 1, 'one issuance for 100 callers');
    assert.equal(upstream.pending.length, 1, 'and it is still open: all 100 are waiting on it');
    assert.equal(cache.stats.waitedForUpstream, 100);
    assert.equal(cache.stats.sharedUpstream, 99, '99 joined the one the first caller started');
    const c = upstream.answer(now());
    const got = await Promise.all(calls);
    assert.ok(got.every((g) => g.AccessKeyId === c.AccessKeyId));

  });

  it('single flight: callers whose credentials expired share one refresh', async (t) => {
    const { cache, upstream, now, advance } = setup(t);
    upstream.sessions.set(TASK, session('s1'));
    cache.put({ session: session('s1'), credentials: creds(now() + 20 * MIN) });
    // The background refresh (due at 4.7 min for 20-minute credentials) is left unanswered.
    await advance(19 * MIN + 40_000, 60_000);
    assert.equal(upstream.issueCalls, 1);
    const waiting = Array.from({ length: 100 }, () => cache.get(TASK));
    await flush();
    assert.equal(upstream.issueCalls, 1, 'they all joined the refresh under way');
    assert.equal(cache.stats.sharedUpstream, 100);
    const fresh = upstream.answer(now());
    assert.ok((await Promise.all(waiting)).every((g) => g.AccessKeyId === fresh.AccessKeyId));
  });

  it('an old refresh that fails after its entry was replaced does not drop the replacement', async (t) => {
    const { cache, upstream, now, advance } = setup(t);
    upstream.sessions.set(TASK, session('s1'));
    cache.put({ session: session('s1'), credentials: creds(T0 + 60 * MIN) });
    await advance(40 * MIN, 60_000);
    assert.equal(upstream.pending.length, 1, 'the refresh of s1 is under way');

    // `broker end deploy-lambda; broker task deploy-lambda`: the new session's credentials are put.
    upstream.sessions.set(TASK, session('s2'));
    const replacement = creds(now() + 60 * MIN);
    cache.put({ session: session('s2'), credentials: replacement });

    // The service now says s1 is over: that is about s1, not about s2.
    upstream.pending.shift()!.reject(new BrokerError('conflict', 'task session s1 has ended'));
    await flush();
    assert.deepEqual(cache.status().map((s) => s.sessionId), ['s2'], 's2 is still held');
    assert.equal((await cache.get(TASK)).AccessKeyId, replacement.AccessKeyId);
    assert.equal(upstream.issueCalls, 1, 'answered from memory, no new discovery');
  });

  it('an old refresh that succeeds after its entry was replaced does not overwrite or drop the replacement', async (t) => {
    const { cache, upstream, now, advance } = setup(t);
    upstream.sessions.set(TASK, session('s1'));
    cache.put({ session: session('s1'), credentials: creds(T0 + 60 * MIN) });
    await advance(40 * MIN, 60_000);
    upstream.sessions.set(TASK, session('s2'));
    const replacement = creds(now() + 60 * MIN);
    cache.put({ session: session('s2'), credentials: replacement });
    upstream.answer(now());
    await flush();
    assert.deepEqual(cache.status().map((s) => s.sessionId), ['s2']);
    assert.equal((await cache.get(TASK)).AccessKeyId, replacement.AccessKeyId);
  });

  it('a caller waiting on an entry that `broker exec` replaced (new agent) gets the new credentials, not "the task session ended"', async (t) => {
    const { cache, upstream, now, advance } = setup(t);
    upstream.sessions.set(TASK, session('s1'));
    cache.put({ session: session('s1'), credentials: creds(T0 + 20 * MIN) });
    // Nothing usable is left: a credential_process call waits for the refresh.
    await advance(19 * MIN + 40_000, 60_000);
    const pendingBefore = upstream.pending.length;
    const waiting = cache.get(TASK);
    await flush();
    assert.equal(upstream.pending.length, Math.max(1, pendingBefore));

    // exec names another agent: the daemon drops what names the old one and fetches anew.
    upstream.sessions.set(TASK, session('s1', undefined, 'aws'));
    cache.drop(TASK);
    const execWarm = cache.get(TASK);
    await flush();
    assert.equal(upstream.pending.length, 2, 'the old refresh and the new discovery');
    // The new one answers first, then the old one fails as the service sees fit.
    const [oldRefresh] = upstream.pending.splice(0, 1);
    const fresh = upstream.answer(now());
    assert.equal((await execWarm).AccessKeyId, fresh.AccessKeyId);
    oldRefresh!.reject(new BrokerError('conflict', 'superseded'));
    const got = await waiting;
    assert.equal(got.AccessKeyId, fresh.AccessKeyId, 'the waiting caller was answered with what is held now');
    assert.deepEqual(cache.status().map((s) => s.sessionId), ['s1']);
    assert.equal((await cache.get(TASK)).AccessKeyId, fresh.AccessKeyId);
  });

  it('an outage: serves what is held, retries with exponential back-off, logs once; after expiry fails fast until the next attempt is due', async (t) => {
    const { cache, upstream, log, now, advance } = setup(t, () => 0.5);
    upstream.sessions.set(TASK, session('s1'));
    const held = creds(T0 + 60 * MIN);
    cache.put({ session: session('s1'), credentials: held });
    upstream.auto = () => new BrokerError('upstream_unavailable', 'the broker service cannot get credentials from AWS STS: STS is unreachable');

    await advance(40 * MIN, 60_000);
    assert.equal(upstream.issueCalls, 1, 'the refresh was tried');
    assert.equal(cache.status()[0]!.health, 'retrying');
    // Back-off with random() = 0.5: 0.5 s, 1 s, 2 s, 4 s … (full jitter, capped at a minute).
    await advance(499, 499);
    assert.equal(upstream.issueCalls, 1, 'not before the back-off');
    await advance(1, 1);
    assert.equal(upstream.issueCalls, 2);
    await advance(999, 999);
    assert.equal(upstream.issueCalls, 2);
    await advance(1, 1);
    assert.equal(upstream.issueCalls, 3);
    await advance(2_000, 2_000);
    assert.equal(upstream.issueCalls, 4);
    for (let i = 0; i < 10; i++) assert.equal((await cache.get(TASK)).AccessKeyId, held.AccessKeyId, 'held ones served during the outage');
    assert.equal(upstream.issueCalls, 4, 'callers do not add attempts');

    // Past expiry. The background retries went on at their pace meanwhile.
    await advance(20 * MIN, 10_000);
    const attempts = upstream.issueCalls;
    const status = cache.status()[0]!;
    const retryAt = Date.parse(status.nextRefreshAt!);
    assert.ok(retryAt > now(), 'the next attempt is ahead');
    for (let i = 0; i < 20; i++) {
      await assert.rejects(cache.get(TASK), (e: BrokerError) => {
        assert.equal(e.code, 'upstream_unavailable');
        assert.match(e.message, /^no valid credentials for "deploy-lambda": the broker service cannot get credentials from AWS STS: STS is unreachable; the cached ones expired at 2026-11-22T13:00:00\.000Z$/);
        assert.match(e.hint ?? '', /try again later.*broker daemon status/);
        return true;
      });
    }
    assert.equal(upstream.issueCalls, attempts, '20 calls after expiry, not one more upstream attempt: they failed fast');
    assert.equal(log.count(/cannot refresh credentials/), 1, 'the outage is logged once');

    // STS is back: the next due attempt (the timer's) brings fresh credentials.
    upstream.auto = () => ({ session: session('s1'), credentials: creds(now() + 60 * MIN) });
    await advance(retryAt - now() + 1, 1_000);
    assert.equal(upstream.issueCalls, attempts + 1);
    const back = await cache.get(TASK);
    assert.notEqual(back.AccessKeyId, held.AccessKeyId);
    assert.equal(log.count(/refreshed again after upstream failures/), 1);
  });

  it('a session the service says is over is dropped at once, and the caller is told so', async (t) => {
    const { cache, upstream, advance } = setup(t);
    upstream.sessions.set(TASK, session('s1'));
    cache.put({ session: session('s1'), credentials: creds(T0 + 20 * MIN) });
    upstream.auto = () => new BrokerError('conflict', 'the "deploy-lambda" task session ended at …', { hint: 'start a new one: broker task deploy-lambda' });
    await advance(19 * MIN + 40_000, 60_000);
    upstream.sessions.delete(TASK);
    await assert.rejects(cache.get(TASK), (e: BrokerError) => e.code === 'not_found' || e.code === 'conflict');
    assert.deepEqual(cache.status(), []);
  });
});
