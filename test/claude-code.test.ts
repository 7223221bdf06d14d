/**
 * Claude Code's wiring and the console sign-in, on real peers (moto as STS behind a recording proxy,
 * the test IdP, the broker service, a private gnome-keyring): `broker configure claude` asks the
 * daemon for the template, and the commands it writes are run as Claude Code runs them (`sh -c`):
 * awsAuthRefresh starts the task session, then reuses it; awsCredentialExport prints the JSON
 * Claude Code reads, with Expiration, keys the AWS CLI accepts. `broker console` gets a sign-in
 * URL from the task's moto-issued credentials. There is no offline peer for AWS's federation
 * endpoint: a local endpoint here checks the request's format (Action, SessionDuration, the Session
 * JSON and that it holds exactly the task's credentials) and answers a SigninToken.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EXIT_CODES } from '../broker/errors.js';
import { broker, deviceLogin, makeTestHome, run, type RunResult, type TestHome } from './peers/cli.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { VENV_BIN } from './peers/paths.js';
import { assumeRoleCalls, issuedSecrets } from './peers/recording-proxy.js';
import { filesContaining } from './peers/secret-scan.js';
import { startStack, type Stack } from './peers/stack.js';

interface Exported { Credentials: { AccessKeyId: string; SecretAccessKey: string; SessionToken: string; Expiration: string } }

/** A stand-in for https://signin.aws.amazon.com/federation that checks what it is sent. */
function federationEndpoint() {
  const seen: { action: string | null; duration: string | null; session: unknown; problems: string[] }[] = [];
  const token = `tok-${randomBytes(24).toString('base64url')}`;
  let status = 200;
  const server: Server = createServer((req: IncomingMessage, res) => {
    const u = new URL(req.url ?? '/', 'http://127.0.0.1');
    const problems: string[] = [];
    if (req.method !== 'GET') problems.push(`method ${req.method}`);
    if (u.pathname !== '/federation') problems.push(`path ${u.pathname}`);
    const keys = [...u.searchParams.keys()];
    const allowed = ['Action', 'SessionDuration', 'Session'];
    if (keys.some((k) => !allowed.includes(k))) problems.push(`parameters ${keys.join(',')}`);
    let session: unknown;
    try {
      session = JSON.parse(u.searchParams.get('Session') ?? '');
    } catch {
      problems.push('Session is not JSON');
    }
    const fields = session && typeof session === 'object' ? Object.keys(session).sort().join(',') : '';
    if (fields !== 'sessionId,sessionKey,sessionToken' || Object.values(session as object).some((v) => typeof v !== 'string' || v === '')) {
      problems.push(`Session holds ${fields || 'no object'}`);
    }
    seen.push({ action: u.searchParams.get('Action'), duration: u.searchParams.get('SessionDuration'), session, problems });
    if (status !== 200 || problems.length || u.searchParams.get('Action') !== 'getSigninToken') {
      res.writeHead(status === 200 ? 400 : status).end('Bad Request');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ SigninToken: token }));
  });
  return {
    seen, token,
    failWith: (s: number) => { status = s; },
    start: () => new Promise<string>((r) => server.listen(0, '127.0.0.1', () => r(`http://127.0.0.1:${(server.address() as { port: number }).port}/federation`))),
    stop: () => new Promise<void>((r) => server.close(() => r())),
  };
}

describe('Claude Code and the console, on a developer machine', () => {
  let stack: Stack;
  let keyring: TestKeyring;
  let m: TestHome;
  let env: Record<string, string>;
  const fed = federationEndpoint();
  let fedUrl: string;
  /** Every command's stderr, for the scan at the end. */
  const stderrs: string[] = [];
  const cli = async (args: string[], extra: Record<string, string> = {}): Promise<RunResult> => {
    const r = await broker(args, { ...env, ...extra });
    stderrs.push(r.stderr);
    return r;
  };
  /** A settings command run as Claude Code runs it: by the shell, with the settings' env. */
  const sh = async (command: string, extra: Record<string, string> = {}): Promise<RunResult> => {
    const r = await run('/bin/sh', ['-c', command], { env: { ...process.env, ...env, ...extra } });
    stderrs.push(r.stderr);
    return r;
  };
  let settings: { awsAuthRefresh: string; awsCredentialExport: string; env: Record<string, string> };

  before(async () => {
    stack = await startStack();
    keyring = await startKeyring();
    m = makeTestHome('broker-claude-code-');
    env = { ...m.env, ...keyring.env, CLAUDE_CONFIG_DIR: '', DISPLAY: '', WAYLAND_DISPLAY: '', BROWSER: '' };
    fedUrl = await fed.start();
    const login = await deviceLogin(stack.svc.url, env, stack.idp, 'alice@example.com');
    assert.equal(login.code, 0, login.stderr);
  });
  after(async () => {
    await fed.stop();
    await m?.stop();
    await keyring?.stop();
    await stack?.stop();
  });

  it('configure claude takes the template\'s region from the service; awsAuthRefresh starts the session, then reuses it', async () => {
    const conf = await cli(['configure', 'claude', '--template', 'deploy-lambda', '-p', 'function=checkout-api']);
    assert.equal(conf.code, 0, conf.stderr);
    settings = JSON.parse(readFileSync(join(m.home, '.claude', 'settings.json'), 'utf8')) as typeof settings;
    assert.equal(settings.env.AWS_REGION, 'eu-west-1', 'the template\'s region, as the service lists it');

    const issued = assumeRoleCalls(stack.proxy.requests).length;
    const first = await sh(settings.awsAuthRefresh, settings.env);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /^Task session \S+ started: deploy-lambda/);
    const again = await sh(settings.awsAuthRefresh, settings.env);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /^Task session \S+ reused: deploy-lambda/);
    assert.equal(assumeRoleCalls(stack.proxy.requests).length, issued + 1, 'one AssumeRole: the start; the reuse is served from memory');
    const call = assumeRoleCalls(stack.proxy.requests).at(-1)!;
    const agentTag = Object.entries(call).find(([k, v]) => /^Tags\.member\.\d+\.Key$/.test(k) && v === 'broker:agent');
    assert.equal(call[agentTag![0].replace(/Key$/, 'Value')], 'claude-code');
  });

  it('awsCredentialExport prints {"Credentials": …} with Expiration, the daemon\'s current keys, which the AWS CLI accepts', async () => {
    const r = await sh(settings.awsCredentialExport, settings.env);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '', 'silent: Claude Code captures stdout only');
    const doc = JSON.parse(r.stdout) as Exported;
    assert.deepEqual(Object.keys(doc), ['Credentials']);
    assert.deepEqual(Object.keys(doc.Credentials), ['AccessKeyId', 'SecretAccessKey', 'SessionToken', 'Expiration']);
    assert.match(doc.Credentials.Expiration, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
    assert.ok(Date.parse(doc.Credentials.Expiration) > Date.now() + 10 * 60_000, 'at least 10 minutes left');
    const cp = JSON.parse((await cli(['credential-process', '--task', 'deploy-lambda'])).stdout) as { AccessKeyId: string; Expiration: string };
    assert.equal(doc.Credentials.AccessKeyId, cp.AccessKeyId);
    assert.equal(doc.Credentials.Expiration, cp.Expiration);
    const issued = issuedSecrets(stack.proxy.requests);
    assert.ok(issued.some((s) => s.accessKeyId === doc.Credentials.AccessKeyId && s.secretAccessKey === doc.Credentials.SecretAccessKey && s.sessionToken === doc.Credentials.SessionToken), 'moto issued them');
    const keysEnv: Record<string, string | undefined> = { ...process.env, ...m.env, AWS_ACCESS_KEY_ID: doc.Credentials.AccessKeyId, AWS_SECRET_ACCESS_KEY: doc.Credentials.SecretAccessKey, AWS_SESSION_TOKEN: doc.Credentials.SessionToken, AWS_REGION: 'eu-west-1' };
    delete keysEnv.AWS_PROFILE;
    const aws = await run(join(VENV_BIN, 'aws'), ['sts', 'get-caller-identity', '--endpoint-url', stack.moto.url, '--output', 'json'], { env: keysEnv });
    assert.equal(aws.code, 0, aws.stderr);
    assert.match((JSON.parse(aws.stdout) as { Arn: string }).Arn, /^arn:aws:sts::123456789012:assumed-role\/broker-deploy-lambda\//);
    // And the agent's own AWS tools, through the env block's AWS_PROFILE (credential_process).
    const tool = await run(join(VENV_BIN, 'aws'), ['sts', 'get-caller-identity', '--endpoint-url', stack.moto.url, '--output', 'json'], { env: { ...process.env, ...env, ...settings.env } });
    assert.equal(tool.code, 0, tool.stderr);
    assert.match((JSON.parse(tool.stdout) as { Arn: string }).Arn, /assumed-role\/broker-deploy-lambda\//);
    // No session: nothing on stdout, one line on stderr, the status of not_found.
    const none = await cli(['credentials', 'export', '--task', 's3-artifacts', '--format', 'claude']);
    assert.equal(none.code, EXIT_CODES.not_found, none.stderr);
    assert.equal(none.stdout, '');
  });

  it('broker console --print: a login URL from a SigninToken the endpoint gave for exactly the task\'s credentials; a warning on stderr', async () => {
    const creds = (JSON.parse((await sh(settings.awsCredentialExport)).stdout) as Exported).Credentials;
    const r = await cli(['console', 'deploy-lambda', '--print'], { BROKER_CONSOLE_FEDERATION_URL: fedUrl });
    assert.equal(r.code, 0, r.stderr);
    const req = fed.seen.at(-1)!;
    assert.deepEqual(req.problems, []);
    assert.equal(req.action, 'getSigninToken');
    assert.equal(req.duration, null, 'no SessionDuration unless asked for');
    assert.deepEqual(req.session, { sessionId: creds.AccessKeyId, sessionKey: creds.SecretAccessKey, sessionToken: creds.SessionToken });
    const url = new URL(r.stdout.trim());
    assert.equal(`${url.origin}${url.pathname}`, fedUrl);
    assert.deepEqual([...url.searchParams.keys()], ['Action', 'Issuer', 'Destination', 'SigninToken']);
    assert.equal(url.searchParams.get('Action'), 'login');
    assert.equal(url.searchParams.get('Issuer'), stack.svc.url);
    assert.equal(url.searchParams.get('Destination'), 'https://console.aws.amazon.com/console/home?region=eu-west-1');
    assert.equal(url.searchParams.get('SigninToken'), fed.token);
    assert.match(r.stderr, /^warning: this URL signs in to the AWS console/);
    assert.ok(!r.stderr.includes(fed.token), 'the URL only on stdout');

    const timed = await cli(['console', 'deploy-lambda', '--print', '--duration', '1h'], { BROKER_CONSOLE_FEDERATION_URL: fedUrl });
    assert.equal(timed.code, 0, timed.stderr);
    assert.equal(fed.seen.at(-1)!.duration, '3600');
  });

  it('opens the URL with $BROWSER where there is a display; without one (and no --print) refuses before any request', async () => {
    const out = join(m.home, 'browser-saw');
    const script = join(m.home, 'browser.sh');
    // The fake browser keeps a hash of the URL it got, not the URL (a credential).
    writeFileSync(script, `#!/bin/sh\nprintf '%s' "$1" | sha256sum | cut -d' ' -f1 > ${JSON.stringify(out)}\n`);
    chmodSync(script, 0o700);
    const r = await cli(['console', 'deploy-lambda'], { BROKER_CONSOLE_FEDERATION_URL: fedUrl, DISPLAY: ':99', BROWSER: script });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /opened the AWS console as deploy-lambda/);
    for (let i = 0; i < 100 && !existsSync(out); i++) await new Promise((res) => setTimeout(res, 100));
    const seen = readFileSync(out, 'utf8').trim();
    assert.equal(seen.length, 64);
    // The URL it opened is the login URL for this token.
    const login = new URL(fedUrl);
    for (const [k, v] of [['Action', 'login'], ['Issuer', stack.svc.url], ['Destination', 'https://console.aws.amazon.com/console/home?region=eu-west-1'], ['SigninToken', fed.token]]) login.searchParams.append(k!, v!);
    assert.equal(seen, createHash('sha256').update(login.href).digest('hex'));

    const before = fed.seen.length;
    const headless = await cli(['console', 'deploy-lambda'], { BROKER_CONSOLE_FEDERATION_URL: fedUrl });
    assert.equal(headless.code, EXIT_CODES.invalid_request);
    assert.match(headless.stderr, /cannot open a browser here\n {2}hint: --print/);
    assert.equal(fed.seen.length, before, 'no sign-in token asked for');
  });

  it('refuses bad input and upstream failures clearly, with no secret in the message', async () => {
    // A port nothing listens on (fetch refuses the spec's "bad ports", such as 1, before connecting).
    const closed = await new Promise<number>((r) => {
      const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => r(p)); });
    });
    const cases: [string[], Record<string, string>, number, RegExp][] = [
      [['console', 'deploy-lambda', '--print', '--duration', '10m'], { BROKER_CONSOLE_FEDERATION_URL: fedUrl }, EXIT_CODES.invalid_request, /--duration "10m" is not 15m to 12h/],
      [['console', 'deploy-lambda', '--print', '--duration', '13h'], { BROKER_CONSOLE_FEDERATION_URL: fedUrl }, EXIT_CODES.invalid_request, /is not 15m to 12h/],
      [['console', 'deploy-lambda', '--print', '--duration', '9h'], { BROKER_CONSOLE_FEDERATION_URL: fedUrl }, EXIT_CODES.invalid_request, /outlasts the task session/],
      [['console', 's3-artifacts', '--print'], { BROKER_CONSOLE_FEDERATION_URL: fedUrl }, EXIT_CODES.not_found, /no active "s3-artifacts" task session/],
      [['console', 'deploy-lambda', '--print'], { BROKER_CONSOLE_FEDERATION_URL: 'http://signin.example.com/federation' }, EXIT_CODES.invalid_config, /neither https nor plain http to loopback/],
      [['console', 'deploy-lambda', '--print'], { BROKER_CONSOLE_FEDERATION_URL: 'http://localhost:1/federation' }, EXIT_CODES.invalid_config, /plain http to localhost\n {2}hint: .*127\.0\.0\.1:1/],
      [['console', 'deploy-lambda', '--print'], { BROKER_CONSOLE_FEDERATION_URL: `http://127.0.0.1:${closed}/federation` }, EXIT_CODES.upstream_unavailable, new RegExp(`cannot reach http://127\\.0\\.0\\.1:${closed}/federation \\(ECONNREFUSED\\)`)],
    ];
    for (const [args, extra, code, message] of cases) {
      const r = await cli(args, extra);
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
      assert.equal(r.stdout, '');
    }
    fed.failWith(400);
    const refused = await cli(['console', 'deploy-lambda', '--print'], { BROKER_CONSOLE_FEDERATION_URL: fedUrl });
    fed.failWith(200);
    assert.equal(refused.code, EXIT_CODES.upstream_error);
    assert.match(refused.stderr, /refused the sign-in token request \(HTTP 400\)/);
    assert.equal(refused.stdout, '');
  });

  it('no secret in any file (HOME, the service\'s directory, /tmp) or in any command\'s stderr', () => {
    const secrets = issuedSecrets(stack.proxy.requests).flatMap((s) => [s.secretAccessKey, s.sessionToken]);
    assert.ok(secrets.length >= 2);
    const all = [...secrets, fed.token];
    assert.deepEqual(filesContaining([m.home, stack.svc.dir, tmpdir()], all), []);
    for (const e of stderrs) for (const s of all) assert.ok(!e.includes(s), 'a secret on stderr');
    assert.ok(!stack.svc.log().includes(fed.token));
  });
});
