/**
 * Start requests from the developer's side, on real peers (a private gnome-keyring, the test IdP,
 * a real `broker server` with the shipped templates' confirm rules, moto as STS), the compiled CLI
 * and its daemon as people run them: `broker task` shows what is being confirmed and waits;
 * `--confirm-here` confirms with a fresh login at the IdP; `--no-wait` and Ctrl-C leave the request
 * pending with exit 13; an agent inside `broker exec` cannot start or re-scope a task, by the CLI
 * or by the daemon's socket, and each attempt is in the audit log as a pending request; an IdP
 * login of someone who may not decide is refused (exit 5). An approver's side (`broker requests`,
 * `broker deny`), break-glass, a maxAge 0 template against a live IdP session, and the service's
 * webhooks seen by a local receiver.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EXIT_CODES } from '../broker/errors.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import type { AuditRecord } from '../broker/store/audit-event.js';
import { broker, deviceLogin, makeTestHome, run, type RunResult, type TestHome } from './peers/cli.js';
import type { IdpSession } from './peers/idp.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { BROKER_BIN, POLICIES_DIR, VENV_BIN } from './peers/paths.js';
import { assumeRoleCalls, issuedSecrets } from './peers/recording-proxy.js';
import { filesContaining, filesWithTokensFrom } from './peers/secret-scan.js';
import { startStack, type Stack } from './peers/stack.js';
import { parse, stringify } from 'yaml';

interface RequestView {
  id: string; status: string; requester: string; template: string; params: Record<string, string>; agent: string; url: string; waitingFor: string[];
  createdAt: string; decisions: { by: string; decision: string; authTime: string }[];
}

/**
 * The shipped templates as they are, and two of the shipped deploy-lambda with other rules:
 * `two-person` (one approver of group admins, break-glass allowed) and `fresh-login` (maxAge 0).
 */
function testPolicies(): string {
  const dir = join(mkdtempSync(join(tmpdir(), 'broker-confirm-cli-')), 'policies');
  mkdirSync(dir);
  for (const f of readdirSync(POLICIES_DIR)) copyFileSync(join(POLICIES_DIR, f), join(dir, f));
  const deploy = parse(readFileSync(join(POLICIES_DIR, 'deploy-lambda.yaml'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(dir, 'two-person.yaml'), stringify({ ...deploy, name: 'two-person', confirm: { mode: 'approvers', approvers: { groups: ['admins'] }, approvals: 1, breakGlass: true } }));
  writeFileSync(join(dir, 'fresh-login.yaml'), stringify({ ...deploy, name: 'fresh-login', confirm: { mode: 'self', maxAge: 0 } }));
  return dir;
}

/** What the webhook receiver got: each POST, with the status it answered (the first one: 500). */
interface Delivery { path: string; status: number; body: string }

/** `broker …` started in the background, for tests that act while it waits (Ctrl-C, a cancel). */
function brokerInBackground(args: string[], env: Record<string, string>) {
  const child = spawn(process.execPath, [BROKER_BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
  child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
  const done = new Promise<RunResult>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  const stderrMatches = async (re: RegExp, ms = 20_000): Promise<RegExpExecArray> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = re.exec(stderr);
      if (m) return m;
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`no ${re} in stderr:\n${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  return { child, done, stderrMatches };
}

describe('broker task/exec with start requests (human confirmation)', () => {
  let stack: Stack;
  let keyring: TestKeyring;
  let m: TestHome;
  let env: Record<string, string>;
  // Carol (group admins) approves, from her own machine: her own keychain, home and daemon.
  let carolKeyring: TestKeyring;
  let carol: TestHome;
  let carolEnv: Record<string, string>;
  let receiver: Server;
  let hookDir: string;
  const deliveries: Delivery[] = [];
  const audit = async (): Promise<AuditRecord[]> => {
    const s = new SqliteStore(stack.svc.dbPath);
    try { return await s.auditLog.records(0, 100_000); } finally { await s.close(); }
  };
  const mine = async (): Promise<RequestView[]> => {
    const r = await broker(['requests', '--mine', '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { requests: RequestView[] }).requests;
  };

  before(async () => {
    hookDir = mkdtempSync(join(tmpdir(), 'broker-hooks-'));
    receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        // The very first delivery fails: the notifier must try it again.
        const status = deliveries.length === 0 ? 500 : 200;
        const body = Buffer.concat(chunks).toString('utf8');
        deliveries.push({ path: req.url ?? '', status, body });
        writeFileSync(join(hookDir, `${deliveries.length}.json`), body);
        res.writeHead(status).end();
      });
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    const hooks = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
    // The shipped templates as they are: deploy-lambda and s3-artifacts take the default (self).
    stack = await startStack({
      policiesDir: testPolicies(),
      extra: {
        confirm: { default: 'self', maxAge: '5m', timeout: '15m' },
        notifications: { webhooks: [{ url: `${hooks}/generic` }, { url: `${hooks}/slack`, format: 'slack' }] },
      },
    });
    keyring = await startKeyring();
    m = makeTestHome();
    // No browser is opened in CI or without a display: here there is one, a script that notes the URL.
    const opened = join(m.home, 'opened');
    const fakeBrowser = join(m.home, 'browser.sh');
    writeFileSync(fakeBrowser, `#!/bin/sh\necho "$1" >> ${opened}\n`, { mode: 0o755 });
    env = { ...m.env, ...keyring.env, DISPLAY: ':99', WAYLAND_DISPLAY: '', BROWSER: fakeBrowser };
    const login = await deviceLogin(stack.svc.url, env, stack.idp, 'alice@example.com');
    assert.equal(login.code, 0, login.stderr);
    carolKeyring = await startKeyring();
    carol = makeTestHome();
    carolEnv = { ...carol.env, ...carolKeyring.env, DISPLAY: '', WAYLAND_DISPLAY: '' };
    const carolLogin = await deviceLogin(stack.svc.url, carolEnv, stack.idp, 'carol@example.com');
    assert.equal(carolLogin.code, 0, carolLogin.stderr);
  });
  after(async () => {
    await m?.stop();
    await carol?.stop();
    await keyring?.stop();
    await carolKeyring?.stop();
    await stack?.stop();
    receiver?.closeAllConnections();
    await new Promise((r) => receiver?.close(r));
  });
  /** `broker …` as `env`'s person, approving the IdP code it prints as `email` (in `session`'s browser, if given). */
  const withIdpLogin = async (args: string[], who: Record<string, string>, email: string, session?: IdpSession): Promise<RunResult> => {
    // Each code it shows (a second one after a refused login) is approved once.
    const approvals = new Map<string, Promise<void>>();
    const r = await broker(args, who, {
      onStderr: (chunk) => {
        for (const [, code] of chunk.matchAll(/enter code: ([A-Z0-9-]+)/g)) {
          if (!approvals.has(code!)) approvals.set(code!, stack.idp.approveDevice(code!, email, session));
        }
      },
    });
    await Promise.all(approvals.values());
    return r;
  };

  it('--no-wait: prints the request id (--json the request), says what waits for whom, exits 13; no session', async () => {
    const r = await broker(['task', 's3-artifacts', '--param', 'prefix=app/builds', '--reason', 'ship build 7', '--agent', 'claude-code', '--no-wait'], env);
    assert.equal(r.code, EXIT_CODES.confirmation_required, r.stderr);
    assert.match(r.stdout, /^req_[a-z2-7]{26}\n$/, 'the id alone on stdout');
    const id = r.stdout.trim();
    for (const shown of ['s3-artifacts', 'prefix=app/builds', 'ship build 7', 'claude-code', id, 'alice@example.com to confirm', `${stack.svc.url}/requests/${id}`]) {
      assert.ok(r.stderr.includes(shown), `stderr shows ${shown}:\n${r.stderr}`);
    }
    const refreshes = async () => (await audit()).filter((a) => a.event === 'token.refresh').length;
    const refreshed = await refreshes();
    const again = await broker(['task', 's3-artifacts', '--param', 'prefix=app/builds', '--reason', 'ship build 7', '--agent', 'claude-code', '--no-wait', '--json'], env);
    // The 401 of a start that needs confirmation is no expired access token: the daemon does not refresh for it.
    assert.equal(await refreshes(), refreshed, 'no token refresh for a confirmation_required 401');
    assert.equal(again.code, EXIT_CODES.confirmation_required, again.stderr);
    const view = (JSON.parse(again.stdout) as { request: RequestView }).request;
    assert.equal(view.id, id, 'the same start asked again answers the same pending request');
    assert.equal(view.status, 'pending');
    const status = JSON.parse((await broker(['status', '--json'], env)).stdout) as { sessions: unknown[] };
    assert.equal(status.sessions.length, 0, 'nothing started');
    const opened = (() => { try { return readFileSync(join(m.home, 'opened'), 'utf8'); } catch { return ''; } })();
    assert.equal(opened, '', '--no-wait opens no browser');
  });

  it('waits with a progress line, opens the page; Ctrl-C stops waiting with exit 13 and leaves the request pending', async () => {
    const t = brokerInBackground(['task', 's3-artifacts', '--param', 'prefix=ctrl-c', '--agent', 'claude-code'], env);
    await t.stderrMatches(/waiting \d+:\d\d for alice@example\.com to confirm/);
    t.child.kill('SIGINT');
    const r = await t.done;
    assert.equal(r.code, EXIT_CODES.confirmation_required, r.stderr);
    const id = /stopped waiting; start request (req_[a-z2-7]{26}) stays pending/.exec(r.stderr)?.[1];
    assert.ok(id, r.stderr);
    assert.match(r.stderr, /go on waiting: broker task s3-artifacts --param prefix=ctrl-c --agent claude-code/);
    assert.match(r.stderr, new RegExp(`cancel it: broker requests cancel ${id}`));
    assert.equal((await mine()).find((x) => x.id === id)?.status, 'pending');
    assert.equal(readFileSync(join(m.home, 'opened'), 'utf8').trim(), `${stack.svc.url}/requests/${id}`, 'the page was opened in the browser');
  });

  it('a request cancelled while the CLI waits ends the wait with a clear conflict', async () => {
    const t = brokerInBackground(['task', 's3-artifacts', '--param', 'prefix=cancel-me'], env);
    const id = (await t.stderrMatches(/request: {4}(req_[a-z2-7]{26})/))[1]!;
    await t.stderrMatches(/waiting /);
    const c = await broker(['requests', 'cancel', id], env);
    assert.equal(c.code, 0, c.stderr);
    const r = await t.done;
    assert.equal(r.code, EXIT_CODES.conflict, r.stderr);
    assert.match(r.stderr, new RegExp(`start request ${id} \\(s3-artifacts\\) was cancelled`));
  });

  it('an IdP login of someone who may not decide is refused: broker approve exits 5 and nothing is decided', async () => {
    const ask = await broker(['task', 's3-artifacts', '--param', 'prefix=not-bob', '--no-wait'], env);
    const id = ask.stdout.trim();
    let approval: Promise<void> | undefined;
    const r = await broker(['approve', id], env, {
      onStderr: (chunk) => {
        const code = /enter code: ([A-Z0-9-]+)/.exec(chunk)?.[1];
        // Bob is neither its requester nor an approver: the login at the IdP is what counts, not the daemon's.
        if (code && !approval) approval = stack.idp.approveDevice(code, 'bob@example.com');
      },
    });
    await approval;
    assert.equal(r.code, EXIT_CODES.forbidden, r.stderr);
    assert.match(r.stderr, /bob@example\.com may not decide/);
    assert.equal((await mine()).find((x) => x.id === id)?.status, 'pending');
  });

  let humanSession: string;
  let humanRoleSession: string;
  it('the human path: --confirm-here shows the code next to the request, the IdP login confirms it, the session starts and the AWS CLI works', async () => {
    const before = assumeRoleCalls(stack.proxy.requests).length;
    let approval: Promise<void> | undefined;
    let codeLine = '';
    const r = await broker(['task', 'deploy-lambda', '--param', 'function=checkout-api', '--reason', 'fix timeout', '--agent', 'claude-code', '--confirm-here', '--json'], env, {
      onStderr: (chunk) => {
        const code = /enter code: ([A-Z0-9-]+)/.exec(chunk)?.[1];
        if (code && !approval) {
          codeLine = chunk;
          approval = stack.idp.approveDevice(code, 'alice@example.com');
        }
      },
    });
    await approval;
    assert.equal(r.code, 0, r.stderr);
    assert.match(codeLine, /To confirm start request req_[a-z2-7]{26} \(deploy-lambda, function=checkout-api, asked by alice@example\.com\)/);
    const started = JSON.parse(r.stdout) as { session: { id: string; roleSessionName: string }; profile: string };
    humanSession = started.session.id;
    humanRoleSession = started.session.roleSessionName;
    assert.equal(assumeRoleCalls(stack.proxy.requests).length, before + 1, 'one AssumeRole: after the confirmation');
    const start = (await audit()).find((a) => a.event === 'session.start' && a.sessionId === humanSession);
    assert.equal(start?.decision, 'allowed');
    assert.match(String(start?.detail?.request), /^req_/, 'the session start names the request it was confirmed by');

    assert.equal((await broker(['configure', 'aws'], env)).code, 0);
    const aws = await run(join(VENV_BIN, 'aws'), ['sts', 'get-caller-identity', '--profile', 'broker-deploy-lambda', '--endpoint-url', stack.moto.url, '--output', 'json'],
      { env: { ...process.env, ...env } });
    assert.equal(aws.code, 0, aws.stderr);
    assert.match((JSON.parse(aws.stdout) as { Arn: string }).Arn, new RegExp(`assumed-role/broker-deploy-lambda/${started.session.roleSessionName.replace(/\./g, '\\.')}$`));
  });

  it('the injected agent: inside broker exec of a confirmed session, no other task, no re-scoped task, no raw socket start; each attempt audited as pending', async () => {
    const seqBefore = (await audit()).at(-1)!.seq;
    const callsBefore = assumeRoleCalls(stack.proxy.requests).length;
    const sock = join(m.runtimeDir, 'agent-credential-broker', 'daemon.sock');
    const rawStart = JSON.stringify({ op: 'start', request: { template: 'deploy-lambda', params: { function: 'payments-prod' }, reason: '', agent: 'raw-socket' } });
    const rawClient = `const c = require('node:net').connect(${JSON.stringify(sock)}); c.write(${JSON.stringify(`${rawStart}\n`)}); let d = ''; c.on('data', (x) => { d += x; if (d.includes('\\n')) { console.log('raw=' + d.trim()); c.destroy(); } });`;
    const rawFile = join(m.home, 'raw-start.cjs');
    writeFileSync(rawFile, rawClient);
    const script = [
      `b() { "${process.execPath}" "${BROKER_BIN}" "$@"; }`,
      'b task s3-artifacts --param prefix=exfil --no-wait; echo "other-task=$?"',
      'b end deploy-lambda && b task deploy-lambda --param function=other --no-wait; echo "re-scoped=$?"',
      `"${process.execPath}" ${rawFile}`,
    ].join('\n');
    const r = await broker(['exec', 'deploy-lambda', '--', 'sh', '-c', script], env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^other-task=13$/m);
    assert.match(r.stdout, /^re-scoped=13$/m);
    const raw = JSON.parse(/^raw=(.*)$/m.exec(r.stdout)?.[1] ?? `"no answer: ${r.stdout}"`) as { ok: boolean; result: { confirmationRequired?: boolean; session?: unknown } };
    assert.equal(raw.ok, true);
    assert.equal(raw.result.confirmationRequired, true, 'the raw start on the socket got a pending request, no session');
    assert.equal(raw.result.session, undefined);

    // exec reused the human's session (for its own agent name: credentials tagged with it, so issued again).
    const issuedSince = assumeRoleCalls(stack.proxy.requests).slice(callsBefore);
    assert.deepEqual([...new Set(issuedSince.map((c) => c.RoleSessionName))], issuedSince.length ? [humanRoleSession] : [],
      'no credentials were issued for anything but the session the human confirmed');
    const status = JSON.parse((await broker(['status', '--json'], env)).stdout) as { sessions: unknown[] };
    assert.equal(status.sessions.length, 0, 'no session runs: the agent could end the human\'s, not start one');
    const rows = (await audit()).filter((a) => a.seq > seqBefore);
    assert.equal(rows.filter((a) => a.event === 'session.start').length, 0, 'no session start');
    const pending = rows.filter((a) => a.event === 'request.create');
    assert.deepEqual(pending.map((a) => [a.decision, a.developer, a.template, a.detail?.agent]), [
      // The agent's own `broker task` calls are attributed to it (exec's BROKER_AGENT: the command's name).
      ['pending', 'alice@example.com', 's3-artifacts', 'sh'],
      ['pending', 'alice@example.com', 'deploy-lambda', 'sh'],
      ['pending', 'alice@example.com', 'deploy-lambda', 'raw-socket'],
    ]);
    assert.deepEqual(pending.map((a) => (a.detail?.params as Record<string, string>)), [{ prefix: 'exfil' }, { function: 'other' }, { function: 'payments-prod' }]);
    assert.ok(pending.every((a) => typeof a.detail?.request === 'string'), 'each names its request');
    const ended = rows.find((a) => a.event === 'session.end' && a.sessionId === humanSession);
    assert.ok(ended, 'ending the human\'s session needed no confirmation');
  });

  it('an approver: broker requests lists what waits for them (and --json); broker deny --reason ends the requester\'s wait with the reason, exit 5, audited', async () => {
    await liveSessions(); // for the tests of live IdP sessions further down: they age meanwhile
    const t = brokerInBackground(['task', 'two-person', '--param', 'function=billing', '--reason', 'rotate keys', '--agent', 'claude-code'], env);
    const id = (await t.stderrMatches(/request: {4}(req_[a-z2-7]{26})/))[1]!;
    await t.stderrMatches(/waiting \d+:\d\d for alice@example\.com to confirm \(fresh IdP login\); 1 more approval \(group admins\)/);
    const list = await broker(['requests'], carolEnv);
    assert.equal(list.code, 0, list.stderr);
    assert.equal(list.stdout.split('\n').find((l) => l.startsWith(id)),
      `${id}  pending    two-person function=billing  by alice@example.com  agent claude-code  "rotate keys"  waits for: alice@example.com to confirm (fresh IdP login); 1 more approval (group admins)`);
    const json = await broker(['requests', '--json'], carolEnv);
    assert.equal(json.code, 0, json.stderr);
    const listed = (JSON.parse(json.stdout) as { requests: RequestView[] }).requests.filter((r) => r.id === id);
    assert.deepEqual(listed.map((r) => [r.status, r.requester, r.template, r.params, r.agent]), [['pending', 'alice@example.com', 'two-person', { function: 'billing' }, 'claude-code']]);
    const asRequester = await broker(['requests'], env);
    assert.equal(asRequester.stdout, 'No start requests wait for you.\n', 'alice approves nothing, her own requests least of all');

    const deny = await withIdpLogin(['deny', id, '--reason', 'not during the freeze'], carolEnv, 'carol@example.com');
    assert.equal(deny.code, 0, deny.stderr);
    assert.match(deny.stderr, new RegExp(`To deny start request ${id} \\(two-person, function=billing, asked by alice@example\\.com\\)`));
    assert.equal(deny.stdout, `Denied start request ${id} (two-person) as carol@example.com; it is now denied\n`);
    const r = await t.done;
    assert.equal(r.code, EXIT_CODES.forbidden, r.stderr);
    assert.match(r.stderr, new RegExp(`start request ${id} \\(two-person\\) was denied by carol@example\\.com: not during the freeze`));
    assert.match(r.stderr, /nothing was started/);
    const rows = (await audit()).filter((a) => a.detail?.request === id && a.event === 'request.deny');
    assert.deepEqual(rows.map((a) => [a.decision, a.reason, a.developer, a.detail?.by, a.detail?.via]),
      [['denied', 'not during the freeze', 'alice@example.com', 'carol@example.com', 'device']]);
    assert.equal((await mine()).find((x) => x.id === id)?.status, 'denied');
  });

  let breakGlassId: string;
  it('break-glass: --break-glass --reason starts two-person on the requester\'s fresh login alone, audited as request.break_glass; refused without a reason or where the template does not allow it', async () => {
    const noReason = await broker(['task', 'two-person', '--param', 'function=pager', '--break-glass'], env);
    assert.equal(noReason.code, EXIT_CODES.invalid_request, noReason.stderr);
    assert.match(noReason.stderr, /--break-glass needs --reason/);
    const notAllowed = await broker(['task', 'deploy-lambda', '--param', 'function=pager', '--break-glass', '--reason', 'prod is down', '--no-wait'], env);
    assert.equal(notAllowed.code, EXIT_CODES.forbidden, notAllowed.stderr);
    assert.match(notAllowed.stderr, /"deploy-lambda" does not allow break-glass starts/);

    const r = await withIdpLogin(['task', 'two-person', '--param', 'function=pager', '--break-glass', '--reason', 'prod is down', '--confirm-here', '--json'], env, 'alice@example.com');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /requested: {2}by alice@example\.com at .* \(BREAK-GLASS\)/);
    const started = JSON.parse(r.stdout) as { session: { id: string } };
    const start = (await audit()).find((a) => a.event === 'session.start' && a.decision === 'allowed' && a.sessionId === started.session.id);
    breakGlassId = String(start?.detail?.request);
    const rows = (await audit()).filter((a) => a.detail?.request === breakGlassId);
    assert.deepEqual(rows.map((a) => [a.event, a.decision]), [['request.break_glass', 'pending'], ['request.confirm', 'confirmed'], ['session.start', 'allowed']],
      'no approval: the requester\'s confirmation alone');
    assert.equal(rows[0]!.reason, 'prod is down');
    assert.equal(rows[0]!.detail?.breakGlass, true);
    assert.equal((await broker(['end', 'two-person'], env)).code, 0);
  });

  /** A device login at the IdP in `session`'s browser, outside the broker: a live IdP session there. */
  const idpLogin = async (session: IdpSession): Promise<void> => {
    const d = (await (await fetch(`${stack.idp.issuer}/.well-known/openid-configuration`)).json()) as { device_authorization_endpoint: string };
    const da = (await (await fetch(d.device_authorization_endpoint, { method: 'POST', body: new URLSearchParams({ client_id: stack.idp.clientId, scope: 'openid email' }) })).json()) as { user_code: string };
    await stack.idp.approveDevice(da.user_code, 'alice@example.com', session);
  };
  // Two browsers of Alice's with a live IdP session each, from before the requests below.
  let liveBrowsers: Promise<{ sessions: IdpSession[]; at: number }> | undefined;
  const liveSessions = () => liveBrowsers ??= (async () => {
    const sessions = [stack.idp.newSession(), stack.idp.newSession()];
    for (const s of sessions) {
      await idpLogin(s);
      await idpLogin(s);
      assert.equal(s.logins, 1, 'the IdP session is live: a second device login there is not asked to log in');
    }
    return { sessions, at: Date.now() };
  })();
  /** Until the sessions' logins are older than the service's tolerance for the IdP's clock (5 s). */
  const olderThanSkew = async (at: number) => new Promise((r) => setTimeout(r, Math.max(0, at + 6500 - Date.now())));

  it('maxAge 0: the IdP makes the person log in again although their IdP session is live, and the confirmation rests on that login', async () => {
    const { sessions: [aliceBrowser], at } = await liveSessions();
    await olderThanSkew(at);
    const r = await withIdpLogin(['task', 'fresh-login', '--param', 'function=f0', '--confirm-here'], env, 'alice@example.com', aliceBrowser);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /log in at the IdP \(a new login\)/);
    assert.equal(aliceBrowser!.logins, 2, 'the IdP asked for a login again');
    const req = (await mine()).find((x) => x.template === 'fresh-login')!;
    assert.equal(req.status, 'started');
    assert.ok(Date.parse(req.decisions[0]!.authTime) >= Math.floor(Date.parse(req.createdAt) / 1000) * 1000, 'the login behind it came after the request');
    assert.equal((await broker(['end', 'fresh-login'], env)).code, 0);
  });

  it('a live IdP session older than the request is not offered for a confirmation: the IdP is asked for a login after the request (max_age at most its age)', async () => {
    const { sessions: [, aliceBrowser], at } = await liveSessions();
    await olderThanSkew(at);
    const before = aliceBrowser!.logins;
    const r = await withIdpLogin(['task', 's3-artifacts', '--param', 'prefix=live-session', '--confirm-here'], env, 'alice@example.com', aliceBrowser);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(aliceBrowser!.logins, before + 1, 'the IdP asked for a login again');
    assert.doesNotMatch(r.stderr, /not fresh enough/, 'no refused login on the way');
    assert.equal((await broker(['end', 's3-artifacts'], env)).code, 0);
  });

  it('webhooks: requests, decisions and the break-glass start reached the receiver, the first after a failed try; no secret in any payload', async () => {
    const generic = async () => {
      for (let i = 0; i < 100; i++) {
        const got = deliveries.filter((d) => d.path === '/generic' && d.status === 200).map((d) => JSON.parse(d.body) as Record<string, any>);
        if (got.some((b) => b.event === 'request.decided' && b.decision === 'started' && b.request.id === breakGlassId)) return got;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`not all notices arrived: ${deliveries.map((d) => d.body).join('\n')}`);
    };
    const got = await generic();
    const of = (id: string) => got.filter((b) => b.request.id === id).map((b) => [b.event, b.decision, b.by, b.reason]);
    assert.deepEqual(of(breakGlassId), [
      ['request.created', undefined, undefined, undefined],
      ['break_glass', undefined, undefined, undefined],
      ['request.decided', 'confirm', 'alice@example.com', undefined],
      ['request.decided', 'started', 'alice@example.com', undefined],
    ]);
    const denied = got.find((b) => b.event === 'request.decided' && b.decision === 'deny');
    assert.deepEqual([denied?.by, denied?.reason, denied?.request.template], ['carol@example.com', 'not during the freeze', 'two-person']);
    assert.ok(got.some((b) => b.event === 'request.decided' && b.decision === 'confirm' && b.request.template === 'deploy-lambda'), 'the human path\'s confirmation');
    // The first delivery was answered 500; the same notice came again and was taken.
    assert.equal(deliveries[0]!.status, 500);
    assert.ok(deliveries.slice(1).some((d) => d.path === deliveries[0]!.path && d.body === deliveries[0]!.body && d.status === 200), 'retried');
    assert.match(stack.svc.log(), /webhook to 127\.0\.0\.1:\d+ failed \(status 500\), try 1 of 5/);
    const slack = deliveries.filter((d) => d.path === '/slack').map((d) => (JSON.parse(d.body) as { text: string }).text);
    assert.ok(slack.some((t) => t.startsWith('BREAK-GLASS: alice@example.com') && t.includes('prod is down') && t.endsWith(`/requests/${breakGlassId}`)), slack.join('\n'));
    // Every credential STS issued in this file, and any token the service or the IdP signed.
    const secrets = issuedSecrets(stack.proxy.requests).flatMap((c) => [c.secretAccessKey, c.sessionToken]);
    assert.ok(secrets.length >= 4, 'credentials were issued to look for');
    assert.ok(readdirSync(hookDir).length >= deliveries.length && deliveries.length > 10, 'the payloads scanned');
    assert.deepEqual(filesContaining([hookDir], secrets), []);
    assert.deepEqual(filesWithTokensFrom([hookDir], stack.svc.url), []);
    assert.deepEqual(filesWithTokensFrom([hookDir], stack.idp.issuer), []);
  });
});
