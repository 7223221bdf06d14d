/**
 * The login store on a machine without a Secret Service: the kernel keyring of the login session,
 * through the real keyctl (Debian keyutils), with no D-Bus session bus at all. The module in a
 * fresh session keyring; then the whole path on real peers: login stores in the kernel keyring, the
 * daemon reads it, the AWS CLI gets a task's identity, logout removes it, nothing on disk, the
 * secrets never in a keyctl argument list, neither another user nor another session of the same
 * user can read them, and the items go when the session does.
 *
 * The CLI's processes must share one session keyring, as the commands of one shell do. Each is run
 * as `keyctl session <name> …`, which joins a named session keyring that a holder process keeps
 * alive (given user "search" so it can be found by name: test scaffolding, not how PAM makes one).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { EXIT_CODES } from '../broker/errors.js';
import { KEYCHAIN_SERVICE } from '../broker/keychain.js';
import { POSSESSOR_ONLY } from '../broker/kernel-keyring.js';
import { makeTestHome, run, type RunResult, type TestHome } from './peers/cli.js';
import { BROKER_BIN, REPO_ROOT, VENV_BIN } from './peers/paths.js';
import { filesContaining, filesWithTokensFrom } from './peers/secret-scan.js';
import { startStack, type Stack } from './peers/stack.js';

const KEYCTL = spawnSync('sh', ['-c', 'command -v keyctl'], { encoding: 'utf8' }).stdout.trim();
const KEYCHAIN_MODULE = pathToFileURL(join(REPO_ROOT, 'dist', 'broker', 'keychain.js')).href;
const work = mkdtempSync(join(tmpdir(), 'broker-kernel-keyring-'));
const ARGV_LOG = join(work, 'keyctl-argv.log');
const SHIM_DIR = join(work, 'bin');

/** This process's environment without a session bus, and keyctl found first as a shim that logs its arguments. */
function noBus(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${SHIM_DIR}:${process.env.PATH ?? ''}` };
  delete env.DBUS_SESSION_BUS_ADDRESS;
  delete env.BROKER_LOGIN_STORE;
  return { ...env, ...extra };
}

/** A named session keyring kept alive by a holder process (see the file comment). */
interface Session { name: string; serial: number; holder: ChildProcess; stop(): Promise<void> }

async function startSession(): Promise<Session> {
  const name = `broker-test-${randomUUID()}`;
  const holder = spawn(KEYCTL, ['session', name, 'sh', '-c', 'keyctl setperm @s 0x3f0b0000 && keyctl id @s && exec sleep 3600'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const serial = await new Promise<number>((resolve, reject) => {
    let out = '';
    holder.stdout!.on('data', (c: Buffer) => { out += c.toString(); if (out.includes('\n')) resolve(Number(out.trim())); });
    holder.once('exit', () => reject(new Error('the session keyring holder exited')));
  });
  return {
    name, serial, holder,
    stop: async () => {
      if (holder.exitCode !== null) return;
      holder.kill('SIGKILL');
      await new Promise((r) => holder.once('exit', r));
    },
  };
}

/** `cmd args` inside the session keyring, without a session bus. */
function inSession(s: Session, cmd: string, args: string[], env: NodeJS.ProcessEnv, opts: { input?: string; onStderr?: (c: string) => void } = {}): Promise<RunResult> {
  return run(KEYCTL, ['session', s.name, cmd, ...args], { env, ...opts }).then((r) => ({ ...r, stderr: r.stderr.replace(/^Joined session keyring: \d+\n/, '') }));
}

/** The keyctl calls the shim saw, one argument list per line. */
const argvLog = () => { try { return readFileSync(ARGV_LOG, 'utf8'); } catch { return ''; } };

/** Runs keychain.ts's functions in a child: `ops` as [op, account], the secret on stdin. */
const OPS_SCRIPT = `
  import { keychainDelete, keychainGet, keychainSet, loginStoreInUse } from ${JSON.stringify(KEYCHAIN_MODULE)};
  const chunks = []; for await (const c of process.stdin) chunks.push(c);
  const secret = Buffer.concat(chunks).toString('utf8');
  const out = [];
  for (const [op, account] of JSON.parse(process.env.OPS)) {
    try {
      if (op === 'store') out.push(await loginStoreInUse());
      if (op === 'set') { await keychainSet(account, secret, { expiresAt: Date.now() + 3_600_000 }); out.push(true); }
      if (op === 'get') out.push(await keychainGet(account));
      if (op === 'delete') out.push(await keychainDelete(account));
    } catch (e) { out.push({ name: e.name, code: e.code, message: e.message, hint: e.hint }); }
  }
  process.stdout.write(JSON.stringify(out));`;

before(() => {
  assert.ok(KEYCTL, 'keyctl not found: bash scripts/setup.sh installs keyutils');
  spawnSync('mkdir', ['-p', SHIM_DIR]);
  // Logs the arguments of every keyctl the broker runs (and what the daemon runs: PATH is passed on).
  writeFileSync(join(SHIM_DIR, 'keyctl'), `#!/bin/sh\nprintf '%s\\n' "$*" >> ${JSON.stringify(ARGV_LOG)}\nexec ${JSON.stringify(KEYCTL)} "$@"\n`);
  chmodSync(join(SHIM_DIR, 'keyctl'), 0o755);
});
after(() => rmSync(work, { recursive: true, force: true }));

type Out = { ok?: true; name?: string; code?: string; message?: string; hint?: string; kind?: string; label?: string; keyring?: number } | string | boolean | null;

async function ops(s: Session | null, list: [string, string?][], secret: string, extra: Record<string, string> = {}): Promise<Out[]> {
  const env = noBus({ ...extra, OPS: JSON.stringify(list) });
  const args = ['--input-type=module', '-e', OPS_SCRIPT];
  const r = s ? await inSession(s, process.execPath, args, env, { input: secret }) : await run(KEYCTL, ['session', '-', process.execPath, ...args], { env, input: secret });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Out[];
}

/** /proc/keys' line for a key id, as seen by a process in the session (possessors see it). */
async function procKeysLine(s: Session, id: number): Promise<string | undefined> {
  const r = await inSession(s, 'cat', ['/proc/keys'], noBus());
  return r.stdout.split('\n').find((l) => l.startsWith(id.toString(16).padStart(8, '0') + ' '));
}

async function keyId(s: Session, account: string): Promise<number | null> {
  const r = await inSession(s, KEYCTL, ['search', '@s', 'user', `${KEYCHAIN_SERVICE}:${account}`], noBus());
  return r.code === 0 ? Number(r.stdout.trim()) : null;
}

describe('kernel keyring: the store itself (no D-Bus session bus)', () => {
  let s: Session;
  let otherUser: string;
  before(async () => {
    s = await startSession();
    otherUser = `brokerkr${randomUUID().slice(0, 8)}`;
    const u = spawnSync('useradd', ['--no-create-home', '--shell', '/usr/sbin/nologin', otherUser], { encoding: 'utf8' });
    assert.equal(u.status, 0, `useradd: ${u.stderr}`);
  });
  after(async () => {
    await s?.stop();
    if (otherUser) spawnSync('userdel', [otherUser]);
  });

  it('auto picks it without a bus; stores, replaces, reads and deletes; possessor-only, expiring, secret never in argv', async () => {
    const account = `login:https://kr-${randomUUID()}.example`;
    const secret = `refresh-${randomUUID()}-ünïcödé ✓`;
    writeFileSync(ARGV_LOG, '');
    const [store, set, got] = await ops(s, [['store'], ['set', account], ['get', account]], secret);
    assert.deepEqual(store, { kind: 'kernel-keyring', label: 'kernel keyring (session)', keyring: s.serial });
    assert.equal(set, true);
    assert.equal(got, secret);
    const id = await keyId(s, account);
    assert.ok(id, 'the item is a user key in the session keyring');
    const d = await inSession(s, KEYCTL, ['rdescribe', String(id)], noBus());
    const [type, , , perm, desc] = d.stdout.trim().split(';');
    assert.equal(type, 'user');
    assert.equal(parseInt(perm!, 16), POSSESSOR_ONLY, `possessor-only permissions, got ${perm}`);
    assert.equal(desc, `${KEYCHAIN_SERVICE}:${account}`);
    const line = await procKeysLine(s, id);
    assert.ok(line, 'listed in /proc/keys for a possessor');
    assert.doesNotMatch(line.split(/\s+/)[3]!, /^perm$/, `it expires (a timeout is set): ${line}`);
    // The secret went in on stdin: no keyctl argument list held it.
    const log = argvLog();
    assert.match(log, /^padd user agent-credential-broker:login:/m, 'the shim saw the store');
    assert.ok(!log.includes(secret) && !log.includes(secret.slice(0, 20)), `a secret in keyctl's arguments:\n${log}`);

    const [replaced, again] = await ops(s, [['set', account], ['get', account]], 'second-secret-value');
    assert.equal(replaced, true);
    assert.equal(again, 'second-secret-value');
    assert.equal(await keyId(s, account), id, 'replaced in place, same key');
    const [deleted, gone, deletedAgain] = await ops(s, [['delete', account], ['get', account], ['delete', account]], '');
    assert.deepEqual([deleted, gone, deletedAgain], [true, null, false]);
    assert.equal(await keyId(s, account), null);
  });

  it('a key planted under the login\'s name in a keyring linked into the session (as @u is) is not taken for the login', async () => {
    const account = `login:https://planted-${randomUUID()}.example`;
    // A keyring linked from @s, as pam_keyinit links the user keyring, which any process of the user can write.
    const ring = await inSession(s, KEYCTL, ['newring', `planted-${randomUUID().slice(0, 8)}`, '@s'], noBus());
    assert.equal(ring.code, 0, ring.stderr);
    const planted = await inSession(s, KEYCTL, ['padd', 'user', `${KEYCHAIN_SERVICE}:${account}`, ring.stdout.trim()], noBus(), { input: 'an-attackers-login' });
    assert.equal(planted.code, 0, planted.stderr);
    const [got] = await ops(s, [['get', account]], '');
    assert.equal(got, null, 'the planted key is not read as the login');
    const [set, mine] = await ops(s, [['set', account], ['get', account]], 'the-real-login');
    assert.deepEqual([set, mine], [true, 'the-real-login'], 'a login stored in @s itself is found before the planted one');
    await ops(s, [['delete', account]], '');
    await inSession(s, KEYCTL, ['unlink', ring.stdout.trim(), '@s'], noBus());
  });

  it('another user, and the same user outside the session, get EACCES for the key id (a process inheriting the session does not); it dies with its session', async () => {
    const account = `login:https://kr-${randomUUID()}.example`;
    const secret = `refresh-${randomUUID()}`;
    // A session of its own that ends when this command does: the id is printed from inside.
    const inner = spawnSync(KEYCTL, ['session', '-', 'sh', '-c',
      '"$0" --input-type=module -e "$1" || exit 1; id=$(keyctl search @s user "$2"); echo "id:$id" >&2; '
        + 'keyctl session - keyctl pipe "$id" >/dev/null; echo "same-user-other-session:$?" >&2; '
        + `setpriv --reuid=${otherUser} --regid=${otherUser} --clear-groups "$3" session - "$3" pipe "$id" >/dev/null; echo "other-user:$?" >&2; `
        // Possession comes from the keyrings a process holds, not its user: a process that inherits
        // this session keyring, even after changing user (setuid, sudo without pam_keyinit), can read
        // it. Shown here so the README's statement of it stays true.
        + `setpriv --reuid=${otherUser} --regid=${otherUser} --clear-groups "$3" pipe "$id" >/dev/null; echo "other-user-inheriting-the-session:$?" >&2`,
      process.execPath, OPS_SCRIPT, `${KEYCHAIN_SERVICE}:${account}`, KEYCTL], { env: noBus({ OPS: JSON.stringify([['set', account]]) }), input: secret, encoding: 'utf8' });
    assert.equal(inner.status, 0, inner.stderr);
    assert.equal(inner.stdout, '[true]');
    const id = Number(/^id:(\d+)$/m.exec(inner.stderr)?.[1]);
    assert.ok(id > 0, inner.stderr);
    assert.match(inner.stderr, /same-user-other-session:1/);
    assert.match(inner.stderr, /other-user:1/);
    assert.equal((inner.stderr.match(/Permission denied/g) ?? []).length, 2, inner.stderr);
    assert.match(inner.stderr, /other-user-inheriting-the-session:0/);
    assert.ok(!inner.stderr.includes(secret));
    // The session is over: the keyring and the key are destroyed (garbage collection is asynchronous).
    let state = '';
    for (let i = 0; i < 50; i++) {
      state = spawnSync(KEYCTL, ['describe', String(id)], { encoding: 'utf8' }).stderr;
      if (/Required key not available/.test(state)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(state, /Required key not available/, 'the key went with its session');
  });

  it('no session keyring of its own (only the per-user one): keychain_unavailable naming both stores; nothing written', async () => {
    const uid = process.getuid!();
    const home = mkdtempSync(join(work, 'home-'));
    const env = noBus({ OPS: JSON.stringify([['set', 'acct'], ['get', 'acct']]), HOME: home, XDG_RUNTIME_DIR: join(home, 'run') });
    // Joining the user session keyring by name makes @s be @us, as for a login without pam_keyinit.
    const r = await run(KEYCTL, ['session', `_uid_ses.${uid}`, process.execPath, '--input-type=module', '-e', OPS_SCRIPT], { env, input: 'child-secret-value' });
    assert.equal(r.code, 0, r.stderr);
    const results = JSON.parse(r.stdout) as Exclude<Out, string | boolean | null>[];
    for (const e of results) {
      assert.equal(e.code, 'keychain_unavailable', JSON.stringify(e));
      assert.match(e.message!, /^no OS keychain available: no Secret Service \(no D-Bus session bus\) and no kernel keyring: /);
      assert.match(e.hint!, /keyctl session -/);
      assert.match(e.hint!, /never falls back to a plaintext file/);
    }
    assert.equal(spawnSync(KEYCTL, ['search', '@us', 'user', `${KEYCHAIN_SERVICE}:acct`]).status, 1, 'nothing in the per-user keyring');
    assert.deepEqual(filesContaining([home], ['child-secret-value']), []);
  });

  it('BROKER_LOGIN_STORE: secret-service refuses without a bus; kernel-keyring is used even with a Secret Service; anything else is invalid_config', async () => {
    const [ss] = await ops(s, [['set', 'acct']], 'x-secret-value', { BROKER_LOGIN_STORE: 'secret-service' });
    assert.equal((ss as { code: string }).code, 'keychain_unavailable');
    assert.match((ss as { message: string }).message, /^no OS keychain available: /);
    const [bad] = await ops(s, [['get', 'acct']], '', { BROKER_LOGIN_STORE: 'file' });
    assert.equal((bad as { code: string }).code, 'invalid_config');
    assert.match((bad as { message: string }).message, /BROKER_LOGIN_STORE must be one of auto, secret-service, kernel-keyring/);
    // With a session bus that has a Secret Service (this file runs under scripts/with-keychain.sh).
    assert.ok(process.env.DBUS_SESSION_BUS_ADDRESS, 'run under scripts/with-keychain.sh');
    const env = { ...noBus({ BROKER_LOGIN_STORE: 'kernel-keyring', OPS: JSON.stringify([['store']]) }), DBUS_SESSION_BUS_ADDRESS: process.env.DBUS_SESSION_BUS_ADDRESS };
    const r = await inSession(s, process.execPath, ['--input-type=module', '-e', OPS_SCRIPT], env);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { kind: string }[])[0]!.kind, 'kernel-keyring');
  });
});

describe('kernel keyring: login → daemon → AWS CLI → logout, with no D-Bus session bus', () => {
  let stack: Stack;
  let s: Session;
  let machine: TestHome;
  let env: NodeJS.ProcessEnv;
  const cli = (args: string[], opts: { onStderr?: (c: string) => void } = {}) => inSession(s, process.execPath, [BROKER_BIN, ...args], env, opts);

  async function login(): Promise<RunResult> {
    let approval: Promise<void> | undefined;
    const r = await cli(['login', '--server', stack.svc.url], {
      onStderr: (chunk) => {
        const m = /code: ([A-Z0-9-]+)/.exec(chunk);
        if (m && !approval) approval = stack.idp.approveDevice(m[1]!, 'alice@example.com');
      },
    });
    await approval;
    return r;
  }

  before(async () => {
    stack = await startStack();
    s = await startSession();
    machine = makeTestHome('broker-kr-home-');
    env = noBus(machine.env);
  });
  after(async () => {
    await cli(['daemon', 'stop']).catch(() => undefined);
    await s?.stop();
    await stack?.stop();
  });

  it('keeps the login in the session keyring, the daemon uses it, and logout removes it; no secret on disk or in argv', async () => {
    writeFileSync(ARGV_LOG, '');
    const r = await login();
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Logged in to .* as alice@example\.com/);
    assert.match(r.stderr, /^login kept in the kernel keyring \(session\)$/m);
    assert.doesNotMatch(r.stderr, /warning/);

    const recordId = await keyId(s, `login:${stack.svc.url}`);
    const deviceId = await keyId(s, `device-key:${stack.svc.url}`);
    assert.ok(recordId && deviceId, 'both items in the session keyring');
    const record = JSON.parse((await inSession(s, KEYCTL, ['pipe', String(recordId)], noBus())).stdout) as { refreshToken: string };
    const jwk = JSON.parse((await inSession(s, KEYCTL, ['pipe', String(deviceId)], noBus())).stdout) as { d: string };
    assert.ok(record.refreshToken && jwk.d);

    // The daemon (started on demand by the CLI, so in this session) reads it.
    const who = await cli(['whoami']);
    assert.equal(who.code, 0, who.stderr);
    assert.match(who.stdout, /^alice@example\.com/);
    assert.match(who.stderr, /login kept in the kernel keyring \(session\)/);
    const status = await cli(['daemon', 'status']);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, new RegExp(`^login store  kernel keyring \\(session\\) \\(keyring ${s.serial}\\)$`, 'm'));
    assert.match(status.stdout, /^login        alice@example\.com at /m);

    const task = await cli(['task', 'deploy-lambda', '--param', 'function=checkout-api', '--reason', 'kernel keyring', '--agent', 'test', '--json']);
    assert.equal(task.code, 0, task.stderr);
    const started = JSON.parse(task.stdout) as { session: { roleSessionName: string } };
    assert.equal((await cli(['configure', 'aws'])).code, 0);
    const aws = await inSession(s, join(VENV_BIN, 'aws'), ['sts', 'get-caller-identity', '--profile', 'broker-deploy-lambda', '--endpoint-url', stack.moto.url, '--output', 'json'], env);
    assert.equal(aws.code, 0, aws.stderr);
    assert.equal((JSON.parse(aws.stdout) as { Arn: string }).Arn, `arn:aws:sts::123456789012:assumed-role/broker-deploy-lambda/${started.session.roleSessionName}`);

    // Nothing on disk: the HOME (config, AWS config, daemon runtime directory and log) holds neither secret, nor any broker token.
    assert.deepEqual(filesContaining([machine.home], [record.refreshToken, jwk.d]), []);
    assert.deepEqual(filesWithTokensFrom([machine.home], stack.svc.url), []);
    // Every keyctl the CLI and the daemon ran: none had a secret among its arguments.
    const log = argvLog();
    assert.match(log, /^padd user agent-credential-broker:device-key:/m);
    assert.match(log, /^pipe \d+$/m, 'the daemon read it through keyctl');
    assert.ok(!log.includes(record.refreshToken) && !log.includes(jwk.d), `a secret in keyctl's arguments:\n${log}`);
    assert.doesNotMatch(log, /eyJ/, 'no token of any kind in keyctl\'s arguments');

    const out = await cli(['logout']);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(await keyId(s, `login:${stack.svc.url}`), null, 'the record is gone');
    assert.equal(await keyId(s, `device-key:${stack.svc.url}`), null, 'the device key is gone');
  });

  it('a daemon started outside the session (as under systemd --user) cannot see the login: login warns, requests say why', async () => {
    await cli(['daemon', 'stop']);
    // Another session keyring, as a systemd --user service or another SSH login has.
    const elsewhere = await run(KEYCTL, ['session', '-', process.execPath, BROKER_BIN, 'daemon', 'start'], { env });
    assert.equal(elsewhere.code, 0, elsewhere.stderr);
    try {
      const r = await login();
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /broker login: warning: the running daemon \(pid \d+\) reads the kernel keyring \(session\) of another session \(keyring \d+\) and does not see this login; restart it from this session: broker daemon stop/);
      const who = await cli(['whoami']);
      assert.equal(who.code, EXIT_CODES.not_logged_in, who.stderr);
      assert.match(who.stderr, /reads the kernel keyring of the session it was started in \(keyring \d+\): if you logged in from another session, run broker daemon stop and retry/);
      // Restarted from this session, it sees the login.
      assert.equal((await cli(['daemon', 'stop'])).code, 0);
      const again = await cli(['whoami']);
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stdout, /^alice@example\.com/);
    } finally {
      await cli(['logout']);
      await cli(['daemon', 'stop']);
    }
  });
});
