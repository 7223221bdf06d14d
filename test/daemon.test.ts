/**
 * The local daemon on real peers: a private gnome-keyring, the test IdP, the broker service and moto
 * as STS. Login goes to the keychain; the daemon starts on demand, reads the keychain once, holds
 * credentials in memory only and answers credential_process from there; `broker exec` runs agents
 * under a task; nothing secret lands on disk or in a log.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { broker, deviceLogin, makeTestHome, run, type RunResult, type TestHome } from './peers/cli.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { BROKER_BIN, VENV_BIN } from './peers/paths.js';
import { assumeRoleCalls } from './peers/recording-proxy.js';
import { filesContaining } from './peers/secret-scan.js';
import { startStack, type Stack } from './peers/stack.js';

interface Creds { Version: number; AccessKeyId: string; SecretAccessKey: string; SessionToken: string; Expiration: string }

const tagsOf = (call: Record<string, string>) => Object.fromEntries(Object.entries(call)
  .filter(([k]) => /^Tags\.member\.\d+\.Key$/.test(k)).map(([k, v]) => [v, call[k.replace(/Key$/, 'Value')]]));

describe('the broker daemon', () => {
  let stack: Stack;
  let keyring: TestKeyring;
  let m: TestHome;
  let env: Record<string, string>;
  /** Every secret the tests saw, for the scans at the end. */
  const secrets = new Set<string>();
  let sessionId: string;

  const cp = async (task = 'deploy-lambda', e = env): Promise<RunResult & { creds?: Creds }> => {
    const r = await broker(['credential-process', '--task', task], e);
    if (r.code !== 0) return r;
    const creds = JSON.parse(r.stdout) as Creds;
    secrets.add(creds.SecretAccessKey);
    secrets.add(creds.SessionToken);
    return { ...r, creds };
  };
  const daemonStatus = async () => {
    const r = await broker(['daemon', 'status', '--json'], env);
    return JSON.parse(r.stdout) as { running: boolean; pid?: number; stats?: { credentialRequests: number; servedFromMemory: number; waitedForUpstream: number; upstreamIssues: number } };
  };
  const issued = () => assumeRoleCalls(stack.proxy.requests).length;

  before(async () => {
    stack = await startStack();
    keyring = await startKeyring();
    m = makeTestHome();
    env = { ...m.env, ...keyring.env };
  });
  after(async () => {
    await m?.stop();
    await keyring?.stop();
    await stack?.stop();
  });

  it('refuses to log in without a keychain, before the device flow, and writes nothing', async () => {
    const noBus = { ...env, DBUS_SESSION_BUS_ADDRESS: `unix:path=${join(m.home, 'no-such-bus')}` };
    const idToken = join(m.home, 'id.jwt');
    writeFileSync(idToken, await stack.idp.loginAs('alice@example.com'));
    const r = await broker(['login', '--server', stack.svc.url, '--id-token-file', idToken], noBus);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no OS keychain available/);
    assert.match(r.stderr, /never falls back to a plaintext file/);
    assert.equal(r.stderr.trim().split('\n').filter((l) => !l.startsWith('  ')).length, 1, 'one error, with its hint');
    assert.ok(!existsSync(join(m.home, '.config', 'agent-credential-broker', 'config.json')), 'not even the server URL was recorded');
  });

  it('keeps the login in the keychain: the refresh token and its device key, nowhere else', async () => {
    const login = await deviceLogin(stack.svc.url, env, stack.idp, 'alice@example.com');
    assert.equal(login.code, 0, login.stderr);
    const stored = JSON.parse(keyring.read(`login:${stack.svc.url}`)!) as { refreshToken: string; dpopKey: { d: string; kty: string } };
    assert.equal(stored.dpopKey.kty, 'EC');
    secrets.add(stored.refreshToken);
    secrets.add(stored.dpopKey.d);
    const config = JSON.parse(readFileSync(join(m.home, '.config', 'agent-credential-broker', 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(Object.keys(config), ['serverUrl'], 'the settings file holds the URL only');
  });

  it('starts on demand and answers credential_process from memory after `broker task`', async () => {
    assert.equal((await daemonStatus()).running, false);
    const task = await broker(['task', 'deploy-lambda', '--param', 'function=checkout-api', '--agent', 'claude-code', '--json'], env);
    assert.equal(task.code, 0, task.stderr);
    sessionId = (JSON.parse(task.stdout) as { session: { id: string } }).session.id;
    const st = await daemonStatus();
    assert.equal(st.running, true, 'broker task started the daemon');

    const before = issued();
    const results = [];
    for (let i = 0; i < 20; i++) results.push(await cp());
    for (const r of results) {
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, '');
      assert.equal(r.creds!.Version, 1);
      assert.ok(Date.parse(r.creds!.Expiration) - Date.now() > 15 * 60_000, 'handed out with more than 15 min left');
    }
    assert.equal(new Set(results.map((r) => r.creds!.AccessKeyId)).size, 1, 'the same cached credentials');
    assert.equal(issued(), before, 'no AssumeRole: all 20 answered from memory');
    const stats = (await daemonStatus()).stats!;
    assert.equal(stats.waitedForUpstream, 0);
    assert.ok(stats.servedFromMemory >= 20);
  });

  it('single flight: 100 concurrent credential_process calls cause at most one issuance', async () => {
    // A restarted daemon holds nothing: every call needs the service, and only one may reach it.
    assert.equal((await broker(['daemon', 'stop'], env)).code, 0);
    assert.equal((await broker(['daemon', 'start'], env)).code, 0);
    const before = issued();
    const all = await Promise.all(Array.from({ length: 100 }, () => cp()));
    for (const r of all) assert.equal(r.code, 0, r.stderr);
    assert.equal(new Set(all.map((r) => r.creds!.AccessKeyId)).size, 1);
    assert.equal(issued() - before, 1, 'exactly one AssumeRole for 100 callers');
  });

  it('is started once even when many first calls race to start it', async () => {
    assert.equal((await broker(['daemon', 'stop'], env)).code, 0);
    const all = await Promise.all(Array.from({ length: 8 }, () => cp()));
    for (const r of all) assert.equal(r.code, 0, r.stderr);
    const st = await daemonStatus();
    assert.equal(st.running, true);
    const pid = Number(readFileSync(join(m.runtimeDir, 'agent-credential-broker', 'daemon.pid'), 'utf8'));
    assert.equal(pid, st.pid, 'one daemon holds the lock and the socket');
  });

  describe('broker exec', () => {
    it('runs the AWS CLI as the task (AWS_PROFILE), adding the profile, and tags the agent', async () => {
      const r = await broker(['exec', 'deploy-lambda', '--', join(VENV_BIN, 'aws'), 'sts', 'get-caller-identity', '--endpoint-url', stack.moto.url, '--output', 'json'], env);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /added profile broker-deploy-lambda/);
      const arn = (JSON.parse(r.stdout) as { Arn: string }).Arn;
      assert.match(arn, new RegExp(`^arn:aws:sts::123456789012:assumed-role/broker-deploy-lambda/alice@example\\.com\\.deploy-lambda\\.${sessionId}$`));
      // exec named the agent: credentials issued from then on carry broker:agent=aws.
      assert.equal(tagsOf(assumeRoleCalls(stack.proxy.requests).at(-1)!)['broker:agent'], 'aws');
      const st = JSON.parse((await broker(['status', '--json'], env)).stdout) as { sessions: { id: string; agent: string }[] };
      assert.equal(st.sessions.find((s) => s.id === sessionId)?.agent, 'aws');
    });

    it('passes the exit code through: 0, 3, and death by SIGTERM', async () => {
      const ok = await broker(['exec', 'deploy-lambda', '--', 'sh', '-c', 'exit 0'], env);
      assert.equal(ok.code, 0, ok.stderr);
      const three = await broker(['exec', 'deploy-lambda', '--', 'sh', '-c', 'exit 3'], env);
      assert.equal(three.code, 3, three.stderr);
      const killed = await broker(['exec', 'deploy-lambda', '--', 'sh', '-c', 'kill -TERM $$'], env);
      assert.equal(killed.code, null);
      assert.equal(killed.signal, 'SIGTERM', 'broker exec dies of the same signal as its child');
    });

    it('forwards signals to the child and exits with its code', async () => {
      // (SIGUSR1 is left out: Node reserves it for its inspector, and its delivery races with that.)
      for (const [sig, code] of [['SIGTERM', 42], ['SIGHUP', 43], ['SIGUSR2', 45], ['SIGINT', 44]] as const) {
        // Its own process group, so that whatever happens the group (broker exec and the shell it
        // started) is killed at the end: an orphaned shell would hold the pipes open and keep this
        // test file from ever exiting.
        const child = spawn(process.execPath, [BROKER_BIN, 'exec', 'deploy-lambda', '--', 'sh', '-c',
          `trap 'exit ${code}' ${sig.slice(3)}; echo ready; while :; do sleep 0.05; done`], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
        const killGroup = () => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* already gone */ } };
        // Bounded: a signal that was not passed on fails here, not at the suite's timeout.
        const guard = setTimeout(killGroup, 15_000);
        const exited = new Promise<[number | null, string | null]>((resolve) => child.once('exit', (c, s) => resolve([c, s])));
        let stderr = '';
        child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
        let exitCode: number | null;
        try {
          await new Promise<void>((resolve) => {
            child.stdout.on('data', (c: Buffer) => { if (c.toString().includes('ready')) resolve(); });
            void exited.then(() => resolve());
          });
          child.kill(sig);
          [exitCode] = await exited;
        } finally {
          clearTimeout(guard);
          killGroup();
          child.stdout.destroy();
          child.stderr.destroy();
        }
        assert.equal(exitCode, code, `${sig}: ${stderr}`);
      }
    });

    it('removes inherited static credentials and configured patterns; sets the task profile and BROKER_SESSION', async () => {
      writeFileSync(join(m.home, '.config', 'agent-credential-broker', 'config.json'),
        JSON.stringify({ serverUrl: stack.svc.url, exec: { scrub: ['*_API_KEY'] } }));
      const inherited = {
        AWS_ACCESS_KEY_ID: 'AKIASTANDINGKEY00001', AWS_SECRET_ACCESS_KEY: 'standing-secret-key', AWS_SESSION_TOKEN: 'standing-token',
        AWS_PROFILE: 'admin', AWS_DEFAULT_PROFILE: 'admin', VAULT_TOKEN: 'hvs.standing', GITHUB_TOKEN: 'ghp_standing',
        MY_API_KEY: 'sk-standing', KEEP_ME: 'kept',
      };
      const r = await broker(['exec', 'deploy-lambda', '--scrub', 'GITHUB_*', '--verbose', '--', 'env'], { ...env, ...inherited });
      assert.equal(r.code, 0, r.stderr);
      const childEnv = Object.fromEntries(r.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
      for (const k of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_DEFAULT_PROFILE', 'VAULT_TOKEN', 'GITHUB_TOKEN', 'MY_API_KEY']) {
        assert.ok(!(k in childEnv), `${k} removed`);
      }
      assert.equal(childEnv.KEEP_ME, 'kept');
      assert.equal(childEnv.AWS_PROFILE, 'broker-deploy-lambda');
      assert.equal(childEnv.BROKER_SESSION, sessionId);
      assert.equal(childEnv.HOME, m.home);
      // --verbose names variables, never their values.
      assert.match(r.stderr, /removed: .*AWS_SECRET_ACCESS_KEY/);
      for (const v of Object.values(inherited)) if (v !== 'kept' && v !== 'admin') assert.ok(!r.stderr.includes(v), `value of a variable leaked: ${v}`);
      writeFileSync(join(m.home, '.config', 'agent-credential-broker', 'config.json'), JSON.stringify({ serverUrl: stack.svc.url }));
    });

    it('--env puts the task credentials themselves in the environment, with their expiry', async () => {
      const r = await broker(['exec', 'deploy-lambda', '--env', '--', 'sh', '-c', 'echo "$AWS_ACCESS_KEY_ID $AWS_CREDENTIAL_EXPIRATION ${AWS_PROFILE:-none}"'], env);
      assert.equal(r.code, 0, r.stderr);
      const [keyId, expiration, profile] = r.stdout.trim().split(' ');
      assert.match(keyId!, /^ASIA/);
      assert.ok(Date.parse(expiration!) > Date.now());
      assert.equal(profile, 'none');
      assert.match(r.stderr, /not refreshed there/);
    });

    it('refuses other parameters than the active session has, and does not run the command', async () => {
      const r = await broker(['exec', 'deploy-lambda', '--param', 'function=other-fn', '--', 'sh', '-c', 'echo ran'], env);
      assert.equal(r.code, 1);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /with other parameters is active \(function=checkout-api\)/);
    });

    it('says clearly when the command does not exist', async () => {
      const r = await broker(['exec', 'deploy-lambda', '--', 'no-such-command-xyz'], env);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /cannot run no-such-command-xyz: command not found/);
    });
  });

  it('ending the task drops its credentials: credential_process fails with one clear line', async () => {
    const end = await broker(['end', 'deploy-lambda'], env);
    assert.equal(end.code, 0, end.stderr);
    const r = await cp();
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr.trim().split('\n').length, 1);
    assert.match(r.stderr, /^broker credential-process: no active "deploy-lambda" task session \(start one: broker task deploy-lambda\)\n$/);
  });

  it('leaves no secret on disk or in any log', () => {
    const hits = filesContaining([m.home, m.runtimeDir, tmpdir(), stack.svc.dir], [...secrets]);
    assert.deepEqual(hits, []);
    assert.ok(secrets.size >= 6, `${secrets.size} secrets looked for`);
    const daemonLog = readFileSync(join(m.runtimeDir, 'agent-credential-broker', 'daemon.log'), 'utf8');
    assert.match(daemonLog, /login loaded from the keychain/, 'the daemon log was written and scanned');
  });

  it('reads the keychain only at start: with the keychain gone it keeps serving, and a new start refuses clearly', async () => {
    const task = await broker(['task', 'read-cloudwatch-logs', '--param', 'logGroup=/aws/lambda/checkout-api'], env);
    assert.equal(task.code, 0, task.stderr);
    await keyring.takeAway();
    for (let i = 0; i < 5; i++) assert.equal((await cp('read-cloudwatch-logs')).code, 0, 'served without the keychain');
    const status = await broker(['status'], env);
    assert.equal(status.code, 0, 'the daemon still has the login (in memory)');

    assert.equal((await broker(['daemon', 'stop'], env)).code, 0);
    const r = await cp('read-cloudwatch-logs');
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^broker credential-process: the broker daemon could not start: no OS keychain available: .*\n$/);
    const run2 = await broker(['daemon', 'run'], env);
    assert.equal(run2.code, 1);
    assert.match(run2.stderr, /no OS keychain available/);
  });
});

describe('the daemon directory', () => {
  let keyring: TestKeyring;
  before(async () => { keyring = await startKeyring(); });
  after(async () => { await keyring?.stop(); });

  it('refuses a directory open to others, or owned by someone else, saying how to fix it', async () => {
    const m = makeTestHome();
    const dir = join(m.runtimeDir, 'agent-credential-broker');
    mkdirSync(dir, { recursive: true });
    chmodSync(dir, 0o755);
    const open = await broker(['daemon', 'run'], { ...m.env, ...keyring.env });
    assert.equal(open.code, 1);
    assert.match(open.stderr, /refusing to start: .* is open to group or others \(mode 0755\)/);
    assert.match(open.stderr, /chmod 700/);
    assert.ok(!existsSync(join(dir, 'daemon.sock')));

    chmodSync(dir, 0o700);
    if (process.getuid?.() === 0) {
      chownSync(dir, 65534, 65534);
      const foreign = await broker(['daemon', 'run'], { ...m.env, ...keyring.env });
      assert.equal(foreign.code, 1);
      assert.match(foreign.stderr, /belongs to uid 65534, not to you/);
      chownSync(dir, 0, 0);
    }
  });

  it('creates its directory 0700 and its socket 0600; a second instance exits cleanly', async () => {
    const m = makeTestHome();
    const e = { ...m.env, ...keyring.env };
    try {
      assert.equal((await broker(['daemon', 'start'], e)).code, 0);
      const dir = join(m.runtimeDir, 'agent-credential-broker');
      assert.equal(statSync(dir).mode & 0o777, 0o700);
      assert.equal(statSync(join(dir, 'daemon.sock')).mode & 0o777, 0o600);
      const second = await run(process.execPath, [BROKER_BIN, 'daemon', 'run'], { env: { ...process.env, ...e }, timeoutMs: 10_000 });
      assert.equal(second.code, 0);
      assert.match(second.stderr, /already running \(pid \d+/);
      const status = await broker(['daemon', 'status'], e);
      assert.equal(status.code, 0);
      assert.match(status.stdout, /not logged in/);
      const cp = await broker(['credential-process', '--task', 'deploy-lambda'], e);
      assert.equal(cp.code, 1);
      assert.match(cp.stderr, /^broker credential-process: no broker service configured|not logged in/);
    } finally {
      await m.stop();
    }
    assert.equal((await broker(['daemon', 'status'], e)).code, 1, 'stopped: status exits 1');
  });

  it('installs and removes a systemd --user unit made from deploy/', async () => {
    const m = makeTestHome();
    const dry = await broker(['daemon', 'install', '--dry-run'], m.env);
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /ExecStart=\S+node \S+bin\/broker\.cjs daemon run/);
    assert.doesNotMatch(dry.stdout, /@[A-Z_]+@/, 'every placeholder filled');
    assert.ok(!existsSync(join(m.home, '.config', 'systemd')), 'dry run wrote nothing');
    const inst = await broker(['daemon', 'install', '--no-enable'], m.env);
    assert.equal(inst.code, 0, inst.stderr);
    const unit = join(m.home, '.config', 'systemd', 'user', 'agent-credential-broker.service');
    assert.match(readFileSync(unit, 'utf8'), /^\[Service\][\s\S]*LimitCORE=0/m);
    const un = await broker(['daemon', 'uninstall'], m.env);
    assert.equal(un.code, 0, un.stderr);
    assert.ok(!existsSync(unit));
  });
});
