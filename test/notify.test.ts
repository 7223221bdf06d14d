/**
 * Webhook notifications (broker/notify): delivered in the background to a real local receiver,
 * retried with back-off, bounded, no redirect followed, no secret in a payload, config checked.
 */
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseServerConfig, notificationsSchema } from '../broker/config/server-config.js';
import { BrokerError } from '../broker/errors.js';
import { createLogger } from '../broker/log.js';
import { createNotifier, requestEventsOf, slackPayload, type NotifyEvent } from '../broker/notify/notifier.js';
import type { StartRequestView } from '../broker/wire/service-api.js';

const view: StartRequestView = {
  id: 'req_0123456789abcdef', status: 'pending', requester: 'dev@example.com', template: 'deploy-lambda',
  params: { function: 'orders' }, reason: 'hotfix 42', agent: 'claude', ttlSeconds: 900, breakGlass: false,
  confirm: { mode: 'self', maxAgeSeconds: 300, approvals: 0 }, waitingFor: ['your confirmation'], decisions: [],
  createdAt: '2026-12-02T20:00:00.000Z', expiresAt: '2026-12-02T20:15:00.000Z', sessionId: null,
  url: 'http://127.0.0.1:8787/requests/req_0123456789abcdef',
};
const EVENTS: NotifyEvent[] = ['request.created', 'request.decided', 'request.expired', 'break_glass'];

interface Hit { path: string; body: unknown; headers: IncomingMessage['headers'] }
let server: Server;
let base: string;
const hits: Hit[] = [];
/** path → handler; default 200. */
const behaviour = new Map<string, (n: number, res: ServerResponse) => void>();
const counts = new Map<string, number>();
let dir: string;
let logFile: string;
let logFd: number;
const logger = () => createLogger({ level: 'info', destination: logFd });
const logLines = () => readFileSync(logFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'notify-'));
  logFile = join(dir, 'log.jsonl');
  logFd = openSync(logFile, 'a');
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = req.url!.split('?')[0]!;
      const n = (counts.get(path) ?? 0) + 1;
      counts.set(path, n);
      hits.push({ path, body: JSON.parse(Buffer.concat(chunks).toString('utf8')), headers: req.headers });
      const h = behaviour.get(path);
      if (h) h(n, res); else res.writeHead(200).end('ok');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  closeSync(logFd);
  rmSync(dir, { recursive: true, force: true });
});

const hooks = (raw: unknown) => notificationsSchema.parse(raw);
const fast = { baseDelayMs: 10, tryTimeoutMs: 500 };

describe('notify', () => {
  it('delivers each event in the generic and the Slack format, with no secret in the payload', async () => {
    const n = createNotifier(hooks({ webhooks: [{ url: `${base}/generic?token=q`, format: 'generic' }, { url: `${base}/slack`, format: 'slack' }] }), logger(), fast);
    for (const e of EVENTS) n.notify(e, view, e === 'request.decided' ? { by: 'lead@example.com', decision: 'approve', reason: 'ok' } : {});
    await n.close();
    const generic = hits.filter((h) => h.path === '/generic');
    const slack = hits.filter((h) => h.path === '/slack');
    assert.deepEqual(generic.map((h) => (h.body as { event: string }).event), EVENTS);
    assert.equal(slack.length, 4);
    for (const h of generic) {
      const b = h.body as Record<string, unknown>;
      for (const k of Object.keys(b)) assert.ok(['event', 'at', 'request', 'by', 'decision', 'reason'].includes(k), k);
      // The view's keys, exactly: nothing secret can ride along.
      assert.deepEqual(Object.keys(b.request as object).sort(), Object.keys(view).sort());
      assert.equal(h.headers['content-type'], 'application/json');
    }
    assert.deepEqual((generic[1]!.body as Record<string, unknown>).by, 'lead@example.com');
    for (const h of slack) {
      const b = h.body as { text: string };
      assert.deepEqual(Object.keys(b), ['text']);
      for (const s of ['deploy-lambda', 'function=orders', view.url]) assert.ok(b.text.includes(s), `${s} in ${b.text}`);
    }
    assert.ok((slack[0]!.body as { text: string }).text.includes('dev@example.com asks to start'));
    assert.ok((slack[0]!.body as { text: string }).text.includes('hotfix 42'));
  });

  it('Slack text escapes &, < and > of what a requester typed: no <!channel>, no link of theirs', () => {
    const evil = { ...view, reason: '<!channel> prod down & <https://evil.example|click to approve>', agent: '<@U123>', params: { function: 'a>b' } };
    for (const e of EVENTS) {
      const { text } = slackPayload(e, evil, e === 'request.decided' ? { by: 'lead@example.com', decision: 'deny', reason: evil.reason } : {});
      assert.ok(!text.includes('<') && !text.includes('>'), text);
      assert.ok(text.includes('&lt;!channel&gt; prod down &amp; &lt;https://evil.example|click to approve&gt;'), text);
      assert.ok(text.endsWith(`: ${view.url}`), 'the link to the page, as is');
    }
    assert.match(slackPayload('request.created', evil, {}).text, /agent &lt;@U123&gt;/);
    assert.match(slackPayload('request.created', evil, {}).text, /function=a&gt;b/);
  });

  it('maps the start requests\' events: decision, by and reason of the latest decision', async () => {
    const n = createNotifier(hooks({ webhooks: [{ url: `${base}/events` }] }), logger(), fast);
    const ev = requestEventsOf(n);
    const decided = { ...view, status: 'denied' as const, decisions: [{ by: 'lead@example.com', decision: 'deny' as const, reason: 'not today', authTime: view.createdAt, at: view.createdAt, via: 'device' as const }] };
    ev.onCreated(view);
    ev.onDecided(decided, 'deny');
    ev.onDecided({ ...view, status: 'started' }, 'started');
    ev.onExpired(view);
    ev.onBreakGlass(view);
    await n.close();
    const got = hits.filter((h) => h.path === '/events').map((h) => h.body as Record<string, unknown>);
    assert.deepEqual(got.map((b) => [b.event, b.by, b.decision, b.reason]), [
      ['request.created', undefined, undefined, undefined],
      ['request.decided', 'lead@example.com', 'deny', 'not today'],
      ['request.decided', 'dev@example.com', 'started', undefined],
      ['request.expired', undefined, undefined, undefined],
      ['break_glass', undefined, undefined, undefined],
    ]);
  });

  it('retries after a 500 and delivers', async () => {
    behaviour.set('/flaky', (n, res) => res.writeHead(n === 1 ? 500 : 200).end());
    const n = createNotifier(hooks({ webhooks: [{ url: `${base}/flaky`, events: ['request.created'] }] }), logger(), fast);
    n.notify('request.created', view);
    n.notify('request.expired', view); // not subscribed
    await n.close();
    assert.equal(counts.get('/flaky'), 2);
    const warn = logLines().filter((l) => l.component === 'notify' && l.host === new URL(base).host && l.failure === 'status 500');
    assert.equal(warn.length, 1);
    assert.equal(warn[0]!.try, 1);
  });

  it('a receiver that is down: tries bounded, one warn line each, give-up logged, never the URL query', async () => {
    const down = createServer();
    await new Promise<void>((r) => down.listen(0, '127.0.0.1', r));
    const port = (down.address() as AddressInfo).port;
    await new Promise((r) => down.close(r));
    const before = logLines().length;
    const n = createNotifier(hooks({ webhooks: [{ url: `http://127.0.0.1:${port}/down?secret=s3cr3t` }] }), logger(), { ...fast, maxTries: 3 });
    n.notify('request.created', view);
    await n.close();
    const lines = logLines().slice(before);
    assert.deepEqual(lines.filter((l) => l.level === 40 && l.failure === 'ECONNREFUSED').map((l) => l.try), [1, 2, 3]);
    assert.equal(lines.filter((l) => l.level === 30 && String(l.msg).includes('given up')).length, 1);
    assert.ok(!readFileSync(logFile, 'utf8').includes('s3cr3t'));
    assert.ok(!readFileSync(logFile, 'utf8').includes('/down'));
  });

  it('notify returns at once when the receiver hangs; each try times out; close is bounded', async () => {
    behaviour.set('/hang', () => { /* never answers */ });
    const n = createNotifier(hooks({ webhooks: [{ url: `${base}/hang` }] }), logger(), { baseDelayMs: 10, tryTimeoutMs: 200, maxTries: 2 });
    const t0 = performance.now();
    for (let i = 0; i < 50; i++) n.notify('request.created', view);
    assert.ok(performance.now() - t0 < 50, 'notify must not wait for delivery');
    const t1 = performance.now();
    await n.close(300);
    assert.ok(performance.now() - t1 < 1500, 'close is bounded');
    assert.ok(logLines().some((l) => l.failure === 'timeout'));
  });

  it('does not follow a redirect: a 302 is a failure', async () => {
    behaviour.set('/moved', (_n, res) => res.writeHead(302, { location: `${base}/target` }).end());
    const n = createNotifier(hooks({ webhooks: [{ url: `${base}/moved` }] }), logger(), { ...fast, maxTries: 2 });
    n.notify('break_glass', view);
    await n.close();
    assert.equal(counts.get('/moved'), 2);
    assert.equal(counts.get('/target'), undefined);
    assert.ok(logLines().some((l) => l.failure === 'status 302'));
  });

  it('drops the oldest when the queue is full, with a warn line', async () => {
    behaviour.set('/slow', (_n, res) => setTimeout(() => res.writeHead(200).end(), 100));
    const n = createNotifier(hooks({ webhooks: [{ url: `${base}/slow` }] }), logger(), { ...fast, maxQueue: 2 });
    for (let i = 0; i < 5; i++) n.notify('request.created', { ...view, id: `req_${i}` });
    await n.close();
    const ids = hits.filter((h) => h.path === '/slow').map((h) => ((h.body as { request: { id: string } }).request.id));
    assert.deepEqual(ids, ['req_0', 'req_3', 'req_4']);
    assert.ok(logLines().some((l) => String(l.msg).includes('queue full')));
  });

  it('sends header values from the environment', async () => {
    process.env.NOTIFY_TEST_BEARER = 'Bearer hook-secret';
    const n = createNotifier(hooks({ webhooks: [{ url: `${base}/auth`, headers: { Authorization: { env: 'NOTIFY_TEST_BEARER' } } }] }), logger(), fast);
    n.notify('request.created', view);
    await n.close();
    assert.equal(hits.find((h) => h.path === '/auth')!.headers.authorization, 'Bearer hook-secret');
    assert.ok(!readFileSync(logFile, 'utf8').includes('hook-secret'));
  });

  it('no webhooks → a no-op notifier', async () => {
    const n = createNotifier(undefined, logger());
    n.notify('request.created', view);
    await n.close();
  });

  it('config: bad webhooks are refused naming file and field', () => {
    const cfg = { oidc: { issuer: 'https://idp.example.com', audience: 'a', algorithms: ['RS256'], cliClientId: 'c' }, tokens: { signingKeys: 'ephemeral' } };
    const bad = (notifications: unknown) => {
      try { parseServerConfig({ ...cfg, notifications }, '/tmp', 'broker.yaml'); } catch (e) { assert.ok(e instanceof BrokerError); return e.details ?? []; }
      assert.fail('accepted');
    };
    const plain = bad({ webhooks: [{ url: 'http://hooks.example.com/x' }] });
    assert.equal(plain[0]!.path, 'broker.yaml:notifications.webhooks.0.url');
    assert.match(plain[0]!.message, /https/);
    assert.match(bad({ webhooks: [{ url: 'http://localhost:9/x' }] })[0]!.message, /127\.0\.0\.1/);
    assert.equal(bad({ webhooks: [{ url: 'https://h.example.com', format: 'teams' }] })[0]!.path, 'broker.yaml:notifications.webhooks.0.format');
    assert.equal(bad({ webhooks: [{ url: 'https://h.example.com', headers: { Authorization: 'Bearer inline' } }] })[0]!.path, 'broker.yaml:notifications.webhooks.0.headers.Authorization');
    assert.equal(bad({ webhooks: [{ url: 'https://h.example.com', events: ['request.nope'] }] })[0]!.path, 'broker.yaml:notifications.webhooks.0.events.0');
    const ok = parseServerConfig({ ...cfg, notifications: { webhooks: [{ url: 'http://127.0.0.1:9/h' }] } }, '/tmp');
    assert.deepEqual(ok.notifications.webhooks[0]!.events, EVENTS);
    assert.deepEqual(parseServerConfig(cfg, '/tmp').notifications.webhooks, []);
  });
});
