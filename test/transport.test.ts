/**
 * Transport: which URLs the broker sends credentials to over plain http (loopback only, one rule for
 * the CLI, the daemon and the service), that no broker API call follows a redirect with them, and
 * what the service's HTTP server tolerates from a client (slow headers and bodies, idle kept-alive
 * connections, oversized headers and bodies). The service runs in-process over real HTTP; the CLI
 * as the real `broker` binary; the redirecting "service" is a loopback HTTP server.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { BrokerApi } from '../broker/client/api.js';
import { generateDpopKey } from '../broker/client/dpop-key.js';
import { parseServerConfig } from '../broker/config/server-config.js';
import { ServiceClient } from '../broker/daemon/service-client.js';
import { BrokerError, EXIT_CODES } from '../broker/errors.js';
import { brokerUrlProblem, isLoopbackHost } from '../broker/limits/urls.js';
import { createLogger } from '../broker/log.js';
import { MAX_HEADER_BYTES, startServer, type RunningServer } from '../broker/server/start.js';
import { MAX_REQUEST_BODY_BYTES, sessionsResponse } from '../broker/wire/service-api.js';
import { broker, makeTestHome, type TestHome } from './peers/cli.js';
import { POLICIES_DIR } from './peers/paths.js';

const OIDC = { issuer: 'https://idp.invalid', audience: 'broker-cli', algorithms: ['RS256'], cliClientId: 'broker-cli' };
const BASE = { oidc: OIDC, tokens: { signingKeys: 'ephemeral' } };

/** The message of each problem parseServerConfig reports, by field. */
function configProblems(raw: Record<string, unknown>): Record<string, string> {
  try {
    parseServerConfig(raw, tmpdir(), 'broker.yaml');
  } catch (e) {
    assert.ok(e instanceof BrokerError && e.code === 'invalid_config', String(e));
    return Object.fromEntries((e.details ?? []).map((d) => [d.path ?? '', d.message]));
  }
  return {};
}

describe('the loopback rule (broker/limits/urls.ts)', () => {
  it('counts 127.0.0.0/8, ::1 and its IPv4-mapped form as loopback, as the URL parser writes them; not localhost', () => {
    const host = (u: string) => new URL(u).hostname;
    for (const u of ['http://127.0.0.1', 'http://127.255.255.254:9', 'http://0x7f.1', 'http://2130706433', 'http://[::1]', 'http://[0:0:0:0:0:0:0:1]', 'http://[::ffff:127.0.0.1]']) {
      assert.equal(isLoopbackHost(host(u)), true, u);
    }
    for (const u of ['http://localhost', 'http://LOCALHOST.', 'http://0.0.0.0', 'http://[::]', 'http://128.0.0.1', 'http://10.0.0.5', 'http://[::7f00:1]',
      'http://[::ffff:10.0.0.1]', 'http://127.0.0.1.nip.io', 'http://broker.example.com']) {
      assert.equal(isLoopbackHost(host(u)), false, u);
    }
  });

  it('takes an https broker URL anywhere and plain http only to loopback, and says how to fix the rest', () => {
    for (const ok of ['https://broker.example.com', 'https://broker.example.com/base', 'http://127.0.0.1:8787', 'http://[::1]:8787', 'http://[::ffff:127.0.0.1]:8787']) {
      assert.equal(brokerUrlProblem(ok), undefined, ok);
    }
    assert.deepEqual(brokerUrlProblem('http://broker.example.com'), {
      problem: 'is plain http to broker.example.com, which is not this machine\'s loopback',
      fix: 'use the service\'s https URL; plain http is accepted only for a service on this machine (127.0.0.1 (any 127.x.x.x) or [::1], written as the address)',
    });
    assert.deepEqual(brokerUrlProblem('http://localhost:8787/x'), {
      problem: 'is plain http to localhost, which can resolve to another machine', fix: 'write the loopback address instead of localhost: http://127.0.0.1:8787/x',
    });
    assert.match(brokerUrlProblem('http://0.0.0.0:8787')!.problem, /plain http to 0\.0\.0\.0/);
    assert.match(brokerUrlProblem('ftp://broker.example.com')!.problem, /not an https URL/);
    assert.match(brokerUrlProblem('broker.example.com')!.problem, /not a URL/);
    assert.match(brokerUrlProblem('https://me:pw@broker.example.com')!.problem, /user name or password/);
    assert.match(brokerUrlProblem('https://broker.example.com/?t=1')!.problem, /query or fragment/);
  });
});

describe('the broker URL in the CLI: --server, BROKER_URL, the settings file', () => {
  let m: TestHome;
  const settingsFile = () => join(m.home, '.config', 'agent-credential-broker', 'config.json');
  before(() => { m = makeTestHome('broker-transport-'); });
  after(async () => { await m?.stop(); });

  // Hosts in .invalid (RFC 2606 §2): were a check missing, nothing off this machine could answer.
  it('broker login --server refuses plain http off loopback, naming the flag and the fix, and saves nothing', async () => {
    const r = await broker(['login', '--server', 'http://broker.invalid'], m.env);
    assert.equal(r.code, EXIT_CODES.invalid_request, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^broker: --server http:\/\/broker\.invalid is plain http to broker\.invalid, which is not this machine's loopback\n {2}hint: use the service's https URL/);
    assert.equal(existsSync(settingsFile()), false, 'no settings file written');

    const local = await broker(['login', '--server', 'http://localhost:8787'], m.env);
    assert.equal(local.code, EXIT_CODES.invalid_request);
    assert.match(local.stderr, /--server http:\/\/localhost:8787 is plain http to localhost.*\n.*hint: write the loopback address instead of localhost: http:\/\/127\.0\.0\.1:8787/);

    // A password in the URL is refused without being echoed.
    const pw = await broker(['login', '--server', 'https://me:hunter2-secret@broker.invalid'], m.env);
    assert.equal(pw.code, EXIT_CODES.invalid_request);
    assert.match(pw.stderr, /--server https:\/\/broker\.invalid holds a user name or password/);
    assert.doesNotMatch(pw.stderr, /hunter2/);

    // Loopback passes the rule: the login then fails only because nothing listens there.
    const loop = await broker(['login', '--server', 'http://127.0.0.1:9'], m.env);
    assert.equal(loop.code, EXIT_CODES.upstream_unavailable);
    assert.match(loop.stderr, /cannot reach the broker service at http:\/\/127\.0\.0\.1:9/);
  });

  it('BROKER_URL is held to the same rule by the CLI and by the daemon, which refuses to start', async () => {
    const env = { ...m.env, BROKER_URL: 'http://broker.invalid:8787' };
    const login = await broker(['login'], env);
    assert.equal(login.code, EXIT_CODES.invalid_config);
    assert.match(login.stderr, /^broker: BROKER_URL http:\/\/broker\.invalid:8787 is plain http to broker\.invalid.*\n.*hint: .*unset BROKER_URL/);
    // Commands other than login reach the service through the daemon, which reads the URL at start.
    const templates = await broker(['templates'], env);
    assert.equal(templates.code, EXIT_CODES.invalid_config);
    assert.match(templates.stderr, /the broker daemon could not start: BROKER_URL http:\/\/broker\.invalid:8787 is plain http/);
    const run = await broker(['daemon', 'run'], env, { timeoutMs: 15_000 });
    assert.equal(run.code, EXIT_CODES.invalid_config);
    assert.match(run.stderr, /BROKER_URL http:\/\/broker\.invalid:8787 is plain http/);
  });

  it('a plain-http serverUrl in the settings file is an error naming the file and the field', async () => {
    mkdirSync(join(m.home, '.config', 'agent-credential-broker'), { recursive: true, mode: 0o700 });
    writeFileSync(settingsFile(), JSON.stringify({ serverUrl: 'http://broker.invalid:8787' }));
    const r = await broker(['login'], m.env);
    assert.equal(r.code, EXIT_CODES.invalid_config);
    assert.ok(r.stderr.includes(`${settingsFile()}:serverUrl: http://broker.invalid:8787 is plain http to broker.invalid, which is not this machine's loopback; use the service's https URL`), r.stderr);
    assert.match(r.stderr, /or run: broker login --server <https URL>/);
    const templates = await broker(['templates'], m.env);
    assert.equal(templates.code, EXIT_CODES.invalid_config);
    assert.ok(templates.stderr.includes(`${settingsFile()}:serverUrl`), templates.stderr);
  });
});

describe('publicUrl in the service config', () => {
  it('is https, or plain http to loopback; without it, the http URL implied by listen must be loopback too', () => {
    assert.match(configProblems({ ...BASE, publicUrl: 'http://broker.example.com' })['broker.yaml:publicUrl']!,
      /^is plain http to broker\.example\.com, which is not this machine's loopback; use the service's https URL/);
    assert.match(configProblems({ ...BASE, publicUrl: 'http://localhost:8787' })['broker.yaml:publicUrl']!, /write the loopback address instead of localhost: http:\/\/127\.0\.0\.1:8787/);
    assert.equal(configProblems({ ...BASE, listen: { host: '0.0.0.0', port: 8787 } })['broker.yaml:publicUrl'],
      'is not set, so clients would be told http://0.0.0.0:8787 (from listen), plain http off this machine; set publicUrl to the https URL clients reach the service at, with TLS terminated in front of it (e.g. publicUrl: https://broker.example.com), or listen on 127.0.0.1');
    assert.match(configProblems({ ...BASE, listen: { host: 'localhost' } })['broker.yaml:publicUrl']!, /clients would be told http:\/\/localhost:8787/);

    const behindTls = parseServerConfig({ ...BASE, listen: { host: '0.0.0.0', port: 8787 }, publicUrl: 'https://broker.example.com/' }, tmpdir());
    assert.equal(behindTls.publicUrl, 'https://broker.example.com');
    assert.equal(parseServerConfig(BASE, tmpdir()).publicUrl, 'http://127.0.0.1:8787');
    assert.equal(parseServerConfig({ ...BASE, listen: { host: '::1', port: 8787 } }, tmpdir()).publicUrl, 'http://[::1]:8787');
  });

  it('broker server refuses to start with a plain-http publicUrl, naming the file and field', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-transport-cfg-'));
    const file = join(dir, 'broker.yaml');
    writeFileSync(file, stringify({ ...BASE, listen: { host: '127.0.0.1', port: 0 }, publicUrl: 'http://broker.example.com', policiesDir: POLICIES_DIR, store: { sqlite: join(dir, 'b.db') } }));
    const r = await broker(['server', '--config', file], {}, { timeoutMs: 20_000 });
    assert.equal(r.code, EXIT_CODES.invalid_config);
    assert.ok(r.stderr.includes(`${file}:publicUrl: is plain http to broker.example.com`), r.stderr);
    assert.equal(existsSync(join(dir, 'b.db')), false, 'nothing was started');
  });

  it('the IdP issuer and Vault address follow the same loopback rule: localhost is not loopback', () => {
    const issuer = (i: string) => configProblems({ ...BASE, oidc: { ...OIDC, issuer: i, allowInsecureHttp: true } })['broker.yaml:oidc.issuer'];
    assert.equal(issuer('http://[::ffff:127.0.0.1]:9000'), undefined);
    assert.match(issuer('http://localhost:9000/realms/dev')!, /localhost, which can resolve to another machine; write the loopback address instead of localhost: http:\/\/127\.0\.0\.1:9000\/realms\/dev/);
    const vault = { tokenRole: 'broker-tasks', token: { env: 'T' } };
    assert.match(configProblems({ ...BASE, vault: { ...vault, address: 'http://localhost:8200' } })['broker.yaml:vault.address']!, /write the loopback address instead of localhost: http:\/\/127\.0\.0\.1:8200/);
    assert.match(configProblems({ ...BASE, vault: { ...vault, address: 'http://localhost:8200', allowInsecureHttp: true, allowRootToken: true } })['broker.yaml:vault.allowRootToken']!,
      /vault\.address is localhost:8200 \(localhost does not count: write 127\.0\.0\.1\)/);
  });
});

interface Recorded { method: string; url: string; body: string; headers: IncomingMessage['headers'] }

/** A loopback HTTP server recording every request it gets, answering with `answer`. */
async function recordingServer(answer: (req: Recorded, res: ServerResponse) => void): Promise<{ url: string; seen: Recorded[]; close(): Promise<void> }> {
  const seen: Recorded[] = [];
  const server: Server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => { body += c; });
    req.on('end', () => {
      const r = { method: req.method ?? '', url: req.url ?? '', body, headers: req.headers };
      seen.push(r);
      answer(r, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, seen, close: () => new Promise<void>((r) => { server.close(() => r()); server.closeAllConnections(); }) };
}

describe('no broker API call follows a redirect', () => {
  let target: Awaited<ReturnType<typeof recordingServer>>;
  let service: Awaited<ReturnType<typeof recordingServer>>;
  let status = 307;
  let location = '';
  before(async () => {
    // Where the redirects point: it must never be asked anything.
    target = await recordingServer((_r, res) => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"access_token":"x","token_type":"Bearer","expires_in":600,"developer":"d"}'); });
    service = await recordingServer((_r, res) => { res.writeHead(status, { ...(location ? { location } : {}), 'content-type': 'application/json' }); res.end('{}'); });
  });
  after(async () => { await service?.close(); await target?.close(); });

  const login = async () => {
    const { privateJwk } = await generateDpopKey();
    const record = {
      v: 2 as const, serverUrl: service.url, developer: 'alice@example.com', refreshToken: 'refresh-token-that-must-not-travel',
      login: { id: 'login-1', generation: 0, expiresAt: new Date(Date.now() + 3_600_000).toISOString() },
    };
    // The login as the keychain holds it (the client re-reads it before each refresh), in memory.
    const keychain = { load: async () => record, loadDeviceKey: async () => privateJwk, save: async () => {} };
    return ServiceClient.fromLogin(record, privateJwk, { keychain });
  };

  it('the daemon\'s refresh (POST /v1/auth/refresh with the refresh token) is not re-sent on 307, 308, 301, 302 or 303', async () => {
    for (const s of [307, 308, 301, 302, 303]) {
      status = s;
      location = `${target.url}/v1/auth/refresh?code=query-that-must-not-show#frag`;
      service.seen.length = 0;
      const e: unknown = await (await login()).sessions().then(() => undefined, (err: unknown) => err);
      assert.deepEqual(target.seen.map((r) => `${r.method} ${r.url} ${r.body}`), [], `HTTP ${s}: nothing reached the redirect's target`);
      assert.equal(service.seen.length, 1, `HTTP ${s}: the service was asked once`);
      assert.equal(service.seen[0]!.url, '/v1/auth/refresh');
      assert.match(service.seen[0]!.body, /refresh-token-that-must-not-travel/, 'the one request carried the refresh token');
      assert.ok(e instanceof BrokerError, String(e));
      assert.equal(e.code, 'upstream_error');
      assert.equal(e.message, `the broker service answered with a redirect to ${target.url}; refusing to follow it with credentials`);
      assert.doesNotMatch(`${e.message} ${e.hint}`, /query-that-must-not-show|frag|\/v1\/auth\/refresh/);
    }
  });

  it('a same-origin redirect is not followed either, and a bearer-token GET is not re-sent', async () => {
    status = 307;
    location = '/v1/auth/refresh-elsewhere?x=1';
    service.seen.length = 0;
    const same = (await login()).sessions();
    await same.catch(() => {});
    assert.deepEqual(service.seen.map((r) => r.url), ['/v1/auth/refresh'], 'asked once, never at the Location');
    await assert.rejects(same, { code: 'upstream_error', message: `the broker service answered with a redirect to ${service.url}; refusing to follow it with credentials` });

    status = 302;
    location = `${target.url}/v1/sessions`;
    service.seen.length = 0;
    const get = new BrokerApi(service.url, 'access-token-that-must-not-travel').request('GET', '/v1/sessions', sessionsResponse);
    await get.catch(() => {});
    assert.equal(target.seen.length, 0, 'the bearer token went nowhere else');
    assert.equal(service.seen.length, 1);
    await assert.rejects(get, { code: 'upstream_error' });

    // No Location at all: still refused, saying so.
    location = '';
    await assert.rejects(new BrokerApi(service.url).request('GET', '/v1/sessions', sessionsResponse),
      { code: 'upstream_error', message: 'the broker service answered HTTP 302 (a redirect); refusing to follow it with credentials' });
  });
});

/** Opens a raw connection, runs `feed` on it, and reports when (ms after connecting) and how the server closed it. */
function rawConnection(port: number, feed: (write: (s: string) => void) => void, giveUpMs: number): Promise<{ closedAfterMs: number | undefined; received: string }> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    let received = '';
    const started = Date.now();
    const timers: NodeJS.Timeout[] = [];
    const done = (closedAfterMs: number | undefined) => {
      timers.forEach(clearTimeout);
      sock.destroy();
      resolve({ closedAfterMs, received });
    };
    sock.setEncoding('utf8');
    sock.on('data', (c: string) => { received += c; });
    sock.on('error', () => { /* reset by the server: 'close' follows */ });
    sock.on('close', () => done(Date.now() - started));
    sock.on('connect', () => feed((s) => { if (!sock.destroyed) sock.write(s); }));
    timers.push(setTimeout(() => done(undefined), giveUpMs));
  });
}

/** Writes `text` one character at once and then every `everyMs`, until the connection is gone. */
function trickle(text: string, everyMs: number) {
  return (write: (s: string) => void) => {
    let i = 0;
    write(text[i++]!);
    const t = setInterval(() => { if (i < text.length) write(text[i++]!); else clearInterval(t); }, everyMs);
    t.unref();
  };
}

describe('the service\'s HTTP server: timeouts and size limits', () => {
  const HEADERS_MS = 1500;
  const REQUEST_MS = 3000;
  const KEEPALIVE_MS = 1000;
  /** Node checks the timeouts every min(1 s, headers timeout / 4); the rest is room for a loaded machine. */
  const SLACK_MS = Math.min(1000, HEADERS_MS / 4) + 1500;
  let server: RunningServer;
  let port: number;

  before(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-transport-svc-'));
    server = await startServer(parseServerConfig({
      ...BASE,
      listen: { host: '127.0.0.1', port: 0, headersTimeoutMs: HEADERS_MS, requestTimeoutMs: REQUEST_MS, keepAliveTimeoutMs: KEEPALIVE_MS },
      policiesDir: POLICIES_DIR, store: { sqlite: join(dir, 'broker.db') },
      aws: { region: 'us-east-1', stsEndpoint: 'http://127.0.0.1:9', iamEndpoint: 'http://127.0.0.1:9', checkTrustAtStartup: false },
    }, dir), { log: createLogger({ level: 'silent' }) });
    port = server.port;
  });
  after(async () => { await server?.stop(); });

  const healthy = async () => assert.equal((await fetch(`${server.url}/healthz`)).status, 200, 'the service still answers');

  it('cuts off a client that sends its headers a byte a second (slowloris) at the headers timeout, with 408', async () => {
    const r = await rawConnection(port, trickle('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 1000), HEADERS_MS + SLACK_MS + 3000);
    assert.ok(r.closedAfterMs !== undefined, 'the server closed the connection');
    assert.ok(r.closedAfterMs >= HEADERS_MS - 100 && r.closedAfterMs <= HEADERS_MS + SLACK_MS, `closed after ${r.closedAfterMs} ms`);
    assert.match(r.received, /^HTTP\/1\.1 408 /);
    // A connection that sends nothing at all, likewise.
    const idle = await rawConnection(port, () => {}, HEADERS_MS + SLACK_MS + 3000);
    assert.ok(idle.closedAfterMs !== undefined && idle.closedAfterMs >= HEADERS_MS - 100 && idle.closedAfterMs <= HEADERS_MS + SLACK_MS, `idle: closed after ${idle.closedAfterMs} ms`);
    await healthy();
  });

  it('cuts off a body sent too slowly at the request timeout, not before', async () => {
    const head = `POST /v1/auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n`;
    const r = await rawConnection(port, (write) => { write(head); trickle(`{"id_token":"${'a'.repeat(180)}"}`, 250)(write); }, REQUEST_MS + SLACK_MS + 3000);
    assert.ok(r.closedAfterMs !== undefined, 'the server closed the connection');
    assert.ok(r.closedAfterMs >= REQUEST_MS - 100 && r.closedAfterMs <= REQUEST_MS + SLACK_MS, `closed after ${r.closedAfterMs} ms`);
    assert.match(r.received, /^HTTP\/1\.1 408 /);
    await healthy();
  });

  it('closes an idle kept-alive connection after keepAliveTimeoutMs', async () => {
    const r = await rawConnection(port, (write) => write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'), KEEPALIVE_MS + SLACK_MS + 3000);
    assert.match(r.received, /^HTTP\/1\.1 200 /);
    assert.match(r.received, /Keep-Alive: timeout=1\r\n/i);
    // Node keeps the socket up to a second past the advertised timeout (server.keepAliveTimeoutBuffer).
    assert.ok(r.closedAfterMs !== undefined && r.closedAfterMs >= KEEPALIVE_MS - 100 && r.closedAfterMs <= KEEPALIVE_MS + 1000 + SLACK_MS, `closed after ${r.closedAfterMs} ms`);
  });

  it('answers 431 to headers over MAX_HEADER_BYTES and serves headers under it', async () => {
    const big = await rawConnection(port, (w) => w(`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'a'.repeat(MAX_HEADER_BYTES + 100)}\r\n\r\n`), 5000);
    assert.match(big.received, /^HTTP\/1\.1 431 /);
    const ok = await fetch(`${server.url}/healthz`, { headers: { 'x-big': 'a'.repeat(MAX_HEADER_BYTES - 1024) } });
    assert.equal(ok.status, 200);
  });

  it('answers 413 payload_too_large, with the limit, to a declared Content-Length over it', async () => {
    const res = await fetch(`${server.url}/v1/auth/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: 'x'.repeat(MAX_REQUEST_BODY_BYTES + 1) });
    assert.equal(res.status, 413);
    assert.deepEqual(await res.json(), { code: 'payload_too_large', message: `request body larger than the limit of ${MAX_REQUEST_BODY_BYTES} bytes` });
    // At the limit exactly, the body is read (and then refused for what it is, not its size).
    const at = await fetch(`${server.url}/v1/auth/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: 'x'.repeat(MAX_REQUEST_BODY_BYTES) });
    assert.equal(at.status, 400);
    assert.equal(((await at.json()) as { code: string }).code, 'invalid_request');
  });

  it('answers 413 to a chunked body (no Content-Length) once it grows past the limit', async () => {
    const { status, body, sent } = await new Promise<{ status: number; body: string; sent: number }>((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, method: 'POST', path: '/v1/auth/token', headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' } }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => { text += c; });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text, sent }));
      });
      req.on('error', reject);
      assert.equal(req.getHeader('content-length'), undefined);
      let sent = 0;
      const chunk = 'y'.repeat(8 * 1024);
      while (sent < 2 * MAX_REQUEST_BODY_BYTES) { req.write(chunk); sent += chunk.length; }
      req.end();
    });
    assert.ok(sent > MAX_REQUEST_BODY_BYTES);
    assert.equal(status, 413);
    assert.equal((JSON.parse(body) as { code: string }).code, 'payload_too_large');
    await healthy();
  });
});
