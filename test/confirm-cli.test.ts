/**
 * Start requests from the developer's side, on real peers (a private gnome-keyring, the test IdP,
 * a real `broker server` with the shipped templates' confirm rules, moto as STS), the compiled CLI
 * and its daemon as people run them: `broker task` shows what is being confirmed and waits;
 * `--confirm-here` confirms with a fresh login at the IdP; `--no-wait` and Ctrl-C leave the request
 * pending with exit 13; an agent inside `broker exec` cannot start or re-scope a task, by the CLI
 * or by the daemon's socket, and each attempt is in the audit log as a pending request; an IdP
 * login of someone who may not decide is refused (exit 5).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EXIT_CODES } from '../broker/errors.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import type { AuditRecord } from '../broker/store/audit-event.js';
import { broker, deviceLogin, makeTestHome, run, type RunResult, type TestHome } from './peers/cli.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { BROKER_BIN, VENV_BIN } from './peers/paths.js';
import { assumeRoleCalls } from './peers/recording-proxy.js';
import { startStack, type Stack } from './peers/stack.js';

interface RequestView { id: string; status: string; requester: string; template: string; params: Record<string, string>; agent: string; url: string; waitingFor: string[] }

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
    // The shipped templates as they are: deploy-lambda and s3-artifacts take the default (self).
    stack = await startStack({ extra: { confirm: { default: 'self', maxAge: '5m', timeout: '15m' } } });
    keyring = await startKeyring();
    m = makeTestHome();
    // No browser is opened in CI or without a display: here there is one, a script that notes the URL.
    const opened = join(m.home, 'opened');
    const fakeBrowser = join(m.home, 'browser.sh');
    writeFileSync(fakeBrowser, `#!/bin/sh\necho "$1" >> ${opened}\n`, { mode: 0o755 });
    env = { ...m.env, ...keyring.env, DISPLAY: ':99', WAYLAND_DISPLAY: '', BROWSER: fakeBrowser };
    const login = await deviceLogin(stack.svc.url, env, stack.idp, 'alice@example.com');
    assert.equal(login.code, 0, login.stderr);
  });
  after(async () => {
    await m?.stop();
    await keyring?.stop();
    await stack?.stop();
  });

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
});
