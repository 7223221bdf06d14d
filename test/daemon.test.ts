/**
 * The local daemon on real peers: a private gnome-keyring, the test IdP, the broker service and moto
 * as STS. Login goes to the keychain; the daemon starts on demand, reads the keychain once, holds
 * credentials in memory only and answers credential_process from there; `broker exec` runs agents
 * under a task; nothing secret lands on disk or in a log.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createPrivateKey, type JsonWebKey } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { STALE_LOCK_MS } from '../broker/daemon/instance-lock.js';
import { installUnit, unitPlan } from '../broker/daemon/service-units.js';
import { runtimeDir } from '../broker/daemon/socket.cjs';
import { EXEC_EXIT, EXIT_CODES } from '../broker/errors.js';
import { broker, deviceLogin, makeTestHome, run, type RunResult, type TestHome } from './peers/cli.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { BROKER_BIN, REPO_ROOT, VENV_BIN } from './peers/paths.js';
import { assumeRoleCalls, issuedSecrets } from './peers/recording-proxy.js';
import { filesContaining, filesWithTokensFrom } from './peers/secret-scan.js';
import { startStack, type Stack } from './peers/stack.js';

interface Creds { Version: number; AccessKeyId: string; SecretAccessKey: string; SessionToken: string; Expiration: string }
interface Stats { credentialRequests: number; servedFromMemory: number; waitedForUpstream: number; sharedUpstream: number; upstreamIssues: number }
interface DaemonState { running: boolean; pid?: number; developer?: string | null; stats?: Stats; memory?: { protected: boolean; how?: string; reason?: string } }

/**
 * A device key as it could leak: the JWK's `d`, the raw scalar (bytes, base64, hex) and the PKCS#8
 * and SEC1 encodings (DER bytes, base64, each PEM line).
 */
function privateKeyForms(jwk: JsonWebKey): (string | Buffer)[] {
  const d = Buffer.from(jwk.d!, 'base64url');
  const key = createPrivateKey({ key: jwk, format: 'jwk' });
  const forms: (string | Buffer)[] = [jwk.d!, d, d.toString('base64'), d.toString('hex')];
  for (const type of ['pkcs8', 'sec1'] as const) {
    const der = key.export({ type, format: 'der' });
    const pem = key.export({ type, format: 'pem' }).toString();
    forms.push(der, der.toString('base64'), ...pem.split('\n').filter((l) => l && !l.startsWith('-----')));
  }
  return forms;
}

/** Connections queued on a Unix socket's listener (Linux: /proc/net/unix lists each with its path). */
function queuedConnections(sock: string): number {
  return readFileSync('/proc/net/unix', 'utf8').split('\n').filter((l) => l.endsWith(` ${sock}`) && l.split(/\s+/)[3] !== '00010000').length;
}

/** The soft and hard core-size limits of a running process, from /proc/<pid>/limits. */
function coreLimits(pid: number): string {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((l) => l.startsWith('Max core file size'))!;
  return line.slice('Max core file size'.length).trim().split(/\s+/).slice(0, 2).join(' ');
}

/** A socket file left by a process that died while listening: connecting to it is refused. */
async function deadSocket(path: string): Promise<void> {
  const child = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'ignore'] });
  await new Promise((r) => child.stdout.once('data', r));
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await gone;
  assert.ok(existsSync(path));
}

/** Something on the daemon's socket that answers pings as `pid` (or, with silent, never answers). */
async function fakeDaemon(path: string, o: { pid?: number; silent?: boolean }): Promise<{ close(): Promise<void> }> {
  const conns = new Set<Socket>();
  const server = createServer((conn) => {
    conns.add(conn);
    conn.on('close', () => conns.delete(conn));
    conn.on('error', () => {});
    conn.on('data', () => {
      if (!o.silent) conn.end(`${JSON.stringify({ ok: true, result: { pid: o.pid, version: 1, serverUrl: null, developer: null, startedAt: new Date().toISOString(), stats: {}, tasks: [] } })}\n`);
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    close: () => new Promise<void>((r) => {
      for (const c of conns) c.destroy();
      server.close(() => r());
    }),
  };
}

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
  /** Device keys of every login made here (each login makes a new one), for the scans at the end. */
  const deviceKeys: JsonWebKey[] = [];
  /** Credentials `broker exec --env` put in a child's environment, as the child printed them. */
  const envSecrets: string[] = [];
  const daemonStatus = async () => {
    const r = await broker(['daemon', 'status', '--json'], env);
    return JSON.parse(r.stdout) as DaemonState;
  };
  /** The login's two keychain items: the record (with the refresh token) and, apart, the device key. */
  const rememberLogin = () => {
    const stored = JSON.parse(keyring.read(`login:${stack.svc.url}`)!) as Record<string, unknown> & { refreshToken: string };
    const dpopKey = JSON.parse(keyring.read(`device-key:${stack.svc.url}`)!) as JsonWebKey;
    secrets.add(stored.refreshToken);
    deviceKeys.push(dpopKey);
    return { ...stored, dpopKey };
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
    assert.equal(r.code, EXIT_CODES.keychain_unavailable);
    assert.match(r.stderr, /no OS keychain available/);
    assert.match(r.stderr, /never falls back to a plaintext file/);
    assert.equal(r.stderr.trim().split('\n').filter((l) => !l.startsWith('  ')).length, 1, 'one error, with its hint');
    assert.ok(!existsSync(join(m.home, '.config', 'agent-credential-broker', 'config.json')), 'not even the server URL was recorded');
  });

  it('keeps the login in the keychain: the refresh token and its device key, nowhere else', async () => {
    const login = await deviceLogin(stack.svc.url, env, stack.idp, 'alice@example.com');
    assert.equal(login.code, 0, login.stderr);
    const stored = rememberLogin();
    assert.equal(stored.dpopKey.kty, 'EC');
    assert.equal(typeof stored.dpopKey.d, 'string', 'the device key item holds the private key');
    assert.ok(!JSON.stringify(keyring.read(`login:${stack.svc.url}`)).includes(stored.dpopKey.d!), 'the login record does not');
    assert.deepEqual(Object.keys(stored).filter((k) => k !== 'dpopKey').sort(), ['developer', 'login', 'refreshToken', 'serverUrl', 'v']);
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

  it('single flight: 100 concurrent credential_process calls, all waiting at once, cause one issuance', async () => {
    // A restarted daemon holds nothing: every call needs the service, and only one may reach it.
    assert.equal((await broker(['daemon', 'stop'], env)).code, 0);
    assert.equal((await broker(['daemon', 'start'], env)).code, 0);
    const st = await daemonStatus();
    const sock = join(m.runtimeDir, 'agent-credential-broker', 'daemon.sock');
    const before = issued();
    // The daemon is held still while the 100 processes start, so that all of them are waiting when
    // it resumes (100 Node processes take seconds to start on two cores; an issuance, milliseconds).
    process.kill(st.pid!, 'SIGSTOP');
    let all: Promise<RunResult & { creds?: Creds }>[];
    try {
      all = Array.from({ length: 100 }, () => cp());
      const deadline = Date.now() + 60_000;
      while (queuedConnections(sock) < 100) {
        assert.ok(Date.now() < deadline, `only ${queuedConnections(sock)} of 100 calls connected`);
        await new Promise((r) => setTimeout(r, 100));
      }
      await new Promise((r) => setTimeout(r, 300)); // their request lines follow their connects
    } finally {
      process.kill(st.pid!, 'SIGCONT');
    }
    const results = await Promise.all(all);
    for (const r of results) assert.equal(r.code, 0, r.stderr);
    assert.equal(new Set(results.map((r) => r.creds!.AccessKeyId)).size, 1);
    assert.equal(issued() - before, 1, 'exactly one AssumeRole for 100 callers');
    const stats = (await daemonStatus()).stats!;
    assert.equal(stats.credentialRequests - st.stats!.credentialRequests, 100);
    assert.equal(stats.waitedForUpstream - st.stats!.waitedForUpstream, 100, 'all 100 waited for the service…');
    assert.equal(stats.sharedUpstream - st.stats!.sharedUpstream, 99, '…99 of them on the request the first one started');
    assert.equal(stats.upstreamIssues - st.stats!.upstreamIssues, 1);
  });

  it('credential_process loads nothing but its three small modules and node:net/node:path/node:fs', async () => {
    // A --require hook that records every module resolved (require and import alike).
    const dir = mkdtempSync(join(tmpdir(), 'broker-imports-'));
    const hook = join(dir, 'record-imports.cjs');
    writeFileSync(hook, `const { registerHooks } = require('node:module');
const { writeFileSync } = require('node:fs');
const seen = [];
registerHooks({ resolve(specifier, context, next) { const r = next(specifier, context); seen.push(r.url); return r; } });
process.on('exit', () => writeFileSync(process.env.BROKER_TEST_IMPORT_LOG, JSON.stringify(seen)));
`);
    const loaded = async (args: string[]) => {
      const log = join(dir, 'imports.json');
      rmSync(log, { force: true });
      const r = await run(process.execPath, ['--require', hook, BROKER_BIN, ...args], { env: { ...process.env, ...env, BROKER_TEST_IMPORT_LOG: log } });
      return { r, urls: JSON.parse(readFileSync(log, 'utf8')) as string[] };
    };
    const fastPath = new Set([
      pathToFileURL(BROKER_BIN).href,
      pathToFileURL(join(REPO_ROOT, 'dist', 'cli', 'credential-process.cjs')).href,
      pathToFileURL(join(REPO_ROOT, 'dist', 'broker', 'daemon', 'socket.cjs')).href,
      pathToFileURL(join(REPO_ROOT, 'dist', 'broker', 'exit-codes.cjs')).href,
      // node:fs for the check of the daemon's directory (lstat): a builtin every Node process has loaded.
      'node:net', 'node:path', 'node:fs',
    ]);
    try {
      // Answered with credentials, and answered with an error: both are the fast path.
      for (const task of ['deploy-lambda', 'no-such-task']) {
        const { r, urls } = await loaded(['credential-process', '--task', task]);
        assert.equal(r.code, task === 'deploy-lambda' ? 0 : EXIT_CODES.not_found, r.stderr);
        assert.ok(urls.some((u) => u.endsWith('/dist/broker/daemon/socket.cjs')), `the hook saw the fast path's own modules: ${urls.join(', ')}`);
        assert.deepEqual(urls.filter((u) => !fastPath.has(u)), [], 'nothing else loaded');
        for (const heavy of ['zod', 'yaml', '@aws-sdk', 'commander', 'keyring', 'pino']) {
          assert.ok(!urls.some((u) => u.includes(`/node_modules/${heavy}`)), `${heavy} not loaded`);
        }
      }
      // The hook does see a heavy import graph when there is one (so the check above can fail).
      const { urls } = await loaded(['daemon', 'status']);
      assert.ok(urls.some((u) => u.includes('/node_modules/commander/')), 'a full CLI command loads commander');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('is started once even when many first calls race to start it', async () => {
    assert.equal((await broker(['daemon', 'stop'], env)).code, 0);
    const all = await Promise.all(Array.from({ length: 8 }, () => cp()));
    for (const r of all) assert.equal(r.code, 0, r.stderr);
    const st = await daemonStatus();
    assert.equal(st.running, true);
    const pid = Number(readFileSync(join(m.runtimeDir, 'agent-credential-broker', 'daemon.pid'), 'utf8').split(' ')[0]);
    assert.equal(pid, st.pid, 'one daemon holds the lock and the socket');
  });

  describe('broker exec', () => {
    it('runs the AWS CLI as the task (--credential-process: AWS_PROFILE), adding the profile, and tags the agent', async () => {
      const r = await broker(['exec', 'deploy-lambda', '--credential-process', '--', join(VENV_BIN, 'aws'), 'sts', 'get-caller-identity', '--endpoint-url', stack.moto.url, '--output', 'json'], env);
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

    it('removes inherited static credentials and configured patterns; sets the task\'s endpoint and BROKER_SESSION', async () => {
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
      assert.ok(!('AWS_PROFILE' in childEnv), 'AWS_PROFILE removed: the container endpoint serves the task');
      assert.match(childEnv.AWS_CONTAINER_CREDENTIALS_FULL_URI!, /^http:\/\/127\.0\.0\.1:\d+\/v1\/exec\//);
      assert.equal(childEnv.AWS_CONFIG_FILE, '/dev/null');
      assert.equal(childEnv.BROKER_SESSION, sessionId);
      assert.equal(childEnv.HOME, m.home);
      // --verbose names variables, never their values.
      assert.match(r.stderr, /removed: .*AWS_SECRET_ACCESS_KEY/);
      for (const v of Object.values(inherited)) if (v !== 'kept' && v !== 'admin') assert.ok(!r.stderr.includes(v), `value of a variable leaked: ${v}`);
      writeFileSync(join(m.home, '.config', 'agent-credential-broker', 'config.json'), JSON.stringify({ serverUrl: stack.svc.url }));
    });

    it('keeps standing keys out of /proc/<pid>/environ of broker exec and of the daemon it starts, and out of the agent; the AWS CLI still works', async () => {
      // Canaries as a developer's shell would have them: removed for the agent (always, or --scrub);
      // OTHER_CANARY is not a credential, so the agent keeps it — but the daemon does not.
      const tag = Math.random().toString(36).slice(2, 10);
      const canaries = {
        AWS_ACCESS_KEY_ID: `AKIACANARY${tag.toUpperCase()}`, AWS_SECRET_ACCESS_KEY: `canary-secret-${tag}`, AWS_SESSION_TOKEN: `canary-token-${tag}`,
        AWS_SECRET_KEY: `canary-go-secret-${tag}`, AWS_CONTAINER_AUTHORIZATION_TOKEN: `canary-container-${tag}`,
        AWS_BEARER_TOKEN_BEDROCK: `canary-bedrock-${tag}`, VAULT_TOKEN: `hvs.canary-${tag}`, GITHUB_TOKEN: `ghp_canary${tag}`,
      };
      const other = `other-canary-${tag}`;
      const before = await daemonStatus();
      assert.equal((await broker(['daemon', 'stop'], env)).code, 0);
      const aws = `${join(VENV_BIN, 'aws')} sts get-caller-identity --endpoint-url ${stack.moto.url} --output json`;
      const r = await broker(['exec', 'deploy-lambda', '--scrub', 'GITHUB_*', '--', 'sh', '-c',
        `tr '\\0' '\\n' < /proc/$PPID/environ; echo =====; env; echo =====; exec ${aws}`], { ...env, ...canaries, OTHER_CANARY: other });
      assert.equal(r.code, 0, r.stderr);
      const [execEnviron, childEnv, answer] = r.stdout.split('=====\n');
      assert.match(execEnviron!, new RegExp(`^OTHER_CANARY=${other}$`, 'm'), 'what was read is broker exec\'s environ');
      assert.match(childEnv!, new RegExp(`^OTHER_CANARY=${other}$`, 'm'));
      const st = await daemonStatus();
      assert.ok(st.running && st.pid !== before.pid, 'broker exec started the daemon');
      assert.equal(st.developer, 'alice@example.com', 'the daemon read the login from the keychain');
      const daemonEnviron = readFileSync(`/proc/${st.pid}/environ`, 'utf8');
      assert.match(daemonEnviron, /(^|\0)DBUS_SESSION_BUS_ADDRESS=/, 'what the keychain needs was passed on');
      assert.ok(!daemonEnviron.includes(other), 'the daemon gets only the allowlisted variables');
      for (const [k, v] of Object.entries(canaries)) {
        assert.ok(!execEnviron!.includes(v), `${k} in /proc/<broker exec>/environ`);
        assert.ok(!childEnv!.includes(v), `${k} in the agent's environment`);
        assert.ok(!daemonEnviron.includes(v), `${k} in /proc/<daemon>/environ`);
      }
      assert.match(execEnviron!, /^BROKER_EXEC_CLEAN_START=/m, 'it re-executed itself');
      assert.match((JSON.parse(answer!) as { Arn: string }).Arn, /:assumed-role\/broker-deploy-lambda\/alice@example\.com\.deploy-lambda\./);
    });

    it('the agent\'s SDK cannot fall back to ~/.aws/credentials or the EC2 metadata service', async () => {
      // Standing keys under the task's own profile name in the credentials file would win over its
      // credential_process (botocore reads the shared credentials file first).
      const creds = join(m.home, '.aws', 'credentials');
      writeFileSync(creds, '[broker-deploy-lambda]\naws_access_key_id = AKIASTANDINGFILEKEY1\naws_secret_access_key = standing-file-secret\n', { mode: 0o600 });
      try {
        const r = await broker(['exec', 'deploy-lambda', '--', 'sh', '-c',
          `echo "$AWS_SHARED_CREDENTIALS_FILE $AWS_EC2_METADATA_DISABLED"; exec ${join(VENV_BIN, 'aws')} sts get-caller-identity --endpoint-url ${stack.moto.url} --output json`],
        { ...env, AWS_EC2_METADATA_DISABLED: 'false' });
        assert.equal(r.code, 0, r.stderr);
        const [vars, ...json] = r.stdout.split('\n');
        assert.match((JSON.parse(json.join('\n')) as { Arn: string }).Arn, /:assumed-role\/broker-deploy-lambda\/alice@example\.com\.deploy-lambda\./, 'the task\'s credentials, not the file\'s');
        assert.equal(vars, '/dev/null true', 'an empty credentials file, and no EC2 metadata service');
      } finally {
        rmSync(creds, { force: true });
      }
    });

    it('exits 128+n instead of dumping core when the agent dies of SIGSEGV or SIGABRT, and runs with core dumps off', async () => {
      for (const [sig, code] of [['SEGV', 139], ['ABRT', 134]] as const) {
        const r = await broker(['exec', 'deploy-lambda', '--', 'sh', '-c', `kill -${sig} $$`], env);
        assert.equal(r.signal, null, `SIG${sig} was not raised on broker exec itself`);
        assert.equal(r.code, code);
        assert.match(r.stderr, new RegExp(`sh was killed by SIG${sig}; exiting with ${code}`));
      }
      // Started from a shell that allows core dumps (as a developer's may): broker exec lowers both
      // limits for itself (and so for the agent).
      const hard = spawnSync('/bin/sh', ['-c', 'ulimit -Hc'], { encoding: 'utf8' }).stdout.trim();
      if (hard !== '0') {
        const r = await run('/bin/sh', ['-c', 'ulimit -c unlimited && exec "$@"', 'sh', process.execPath, BROKER_BIN, 'exec', 'deploy-lambda', '--', 'sh', '-c',
          'grep "Max core file size" /proc/$PPID/limits'], { env: { ...process.env, ...env } });
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /^Max core file size\s+0\s+0\s+bytes/);
      }
    });

    it('--env puts the task credentials themselves in the environment, with their expiry', async () => {
      const r = await broker(['exec', 'deploy-lambda', '--env', '--', 'sh', '-c',
        'echo "$AWS_ACCESS_KEY_ID $AWS_CREDENTIAL_EXPIRATION ${AWS_PROFILE:-none} $AWS_SECRET_ACCESS_KEY $AWS_SESSION_TOKEN"'], env);
      assert.equal(r.code, 0, r.stderr);
      const [keyId, expiration, profile, secretKey, token] = r.stdout.trim().split(' ');
      // Issued for this exec (its agent, sh, differs from the previous one): looked for by the scans.
      envSecrets.push(secretKey!, token!);
      assert.match(keyId!, /^ASIA/);
      assert.ok(Date.parse(expiration!) > Date.now());
      assert.equal(profile, 'none');
      assert.match(r.stderr, /not refreshed there/);
    });

    it('refuses other parameters than the active session has, and does not run the command', async () => {
      const r = await broker(['exec', 'deploy-lambda', '--param', 'function=other-fn', '--', 'sh', '-c', 'echo ran'], env);
      assert.equal(r.code, EXEC_EXIT.failed, 'exec itself failed (a conflict): 125');
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /with other parameters is active \(function=checkout-api\)/);
    });

    it('exits with the command\'s status; 127 when it is not found, 126 when it cannot be run (the env convention)', async () => {
      const child = await broker(['exec', 'deploy-lambda', '--', 'sh', '-c', 'exit 42'], env);
      assert.equal(child.code, 42, child.stderr);
      const missing = await broker(['exec', 'deploy-lambda', '--', 'no-such-command-xyz'], env);
      assert.equal(missing.code, EXEC_EXIT.notFound);
      assert.match(missing.stderr, /cannot run no-such-command-xyz: command not found/);
      const dir = mkdtempSync(join(tmpdir(), 'broker-exec-'));
      try {
        const notExecutable = join(dir, 'script.sh');
        writeFileSync(notExecutable, 'echo ran\n', { mode: 0o644 });
        for (const [what, cmd] of [['a file without execute permission', notExecutable], ['a directory', dir]] as const) {
          const r = await broker(['exec', 'deploy-lambda', '--', cmd], env);
          assert.equal(r.code, EXEC_EXIT.cannotRun, `${what}: ${r.stderr}`);
          assert.equal(r.stdout, '');
          assert.match(r.stderr, /cannot run \S+: permission denied/);
        }
        // Before the child starts, every failure of exec itself is 125: a template that does not
        // exist, a usage error (a missing command) as much as a conflict (above).
        const unknown = await broker(['exec', 'no-such-template', '--', 'sh', '-c', 'echo ran'], env);
        assert.equal(unknown.code, EXEC_EXIT.failed, unknown.stderr);
        assert.equal(unknown.stdout, '');
        assert.equal((await broker(['exec', 'deploy-lambda'], env)).code, EXEC_EXIT.failed);
        assert.equal((await broker(['exec', 'deploy-lambda', '--param', 'nonsense', 'sh'], env)).code, EXEC_EXIT.failed);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('passes the command\'s own options through untouched, with or without --', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'broker-argv-'));
      const argv = join(dir, 'argv.cjs');
      writeFileSync(argv, 'console.log(JSON.stringify(process.argv.slice(2)))\n');
      const node = process.execPath;
      // One agent name throughout, so the session is not re-tagged for every shape.
      const shapes: [string[], string[]][] = [
        [['deploy-lambda', '--agent', 'argv', node, argv, '-p', 'fix the bug', '--model', 'x'], ['-p', 'fix the bug', '--model', 'x']],
        [['deploy-lambda', '--agent', 'argv', '--', node, argv, '-p', 'fix'], ['-p', 'fix']],
        [['--agent', 'argv', 'deploy-lambda', node, argv, '--profile', 'p', 's3', 'ls'], ['--profile', 'p', 's3', 'ls']],
        // exec's own -v before the command, the command's -v after it
        [['deploy-lambda', '-v', '--agent', 'argv', node, argv, '-v'], ['-v']],
        // words that are exec's options, once the command has started, are the command's
        [['deploy-lambda', '--agent', 'argv', node, argv, '--param', 'a=b', '--agent', 'y', '--', '--env'], ['--param', 'a=b', '--agent', 'y', '--', '--env']],
        [['deploy-lambda', '--agent', 'argv', '--', node, argv, '--scrub', 'X', '-h'], ['--scrub', 'X', '-h']],
      ];
      try {
        for (const [args, expected] of shapes) {
          const r = await broker(['exec', ...args], env);
          assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
          assert.deepEqual(JSON.parse(r.stdout), expected, args.join(' '));
          // exec's -v was taken by exec (and only where it came before the command)
          assert.equal(/^removed: /m.test(r.stderr), args.indexOf('-v') === 1, args.join(' '));
        }
        const sh = await broker(['exec', 'deploy-lambda', '--agent', 'argv', '--', 'sh', '-c', 'echo --param'], env);
        assert.equal(sh.code, 0, sh.stderr);
        assert.equal(sh.stdout, '--param\n');
        // An option exec does not know, before the command, is refused rather than run as a command.
        const typo = await broker(['exec', 'deploy-lambda', '--parm', 'a=b', node, argv], env);
        assert.equal(typo.code, EXEC_EXIT.failed);
        assert.equal(typo.stdout, '');
        assert.match(typo.stderr, /unknown option "--parm" before the command/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  it('reads the keychain again on `broker logout` and `broker login`, without a restart', async () => {
    const { pid } = await daemonStatus();
    const out = await broker(['logout'], env);
    assert.equal(out.code, 0, out.stderr);
    let st = await daemonStatus();
    assert.equal(st.pid, pid, 'the same daemon');
    assert.equal(st.developer, null, 'it dropped the login');
    const refused = await cp();
    assert.equal(refused.code, EXIT_CODES.not_logged_in);
    assert.match(refused.stderr, /^broker credential-process: not logged in to http:\/\/127\.0\.0\.1:\d+ \(run: broker login\)\n$/);

    // Someone else logs in on this machine (an ID token from CI, say): the daemon now acts for them.
    const idToken = join(mkdtempSync(join(tmpdir(), 'broker-idtoken-')), 'id.jwt');
    try {
      writeFileSync(idToken, await stack.idp.loginAs('carol@example.com'), { mode: 0o600 });
      const carol = await broker(['login', '--id-token-file', idToken], env);
      assert.equal(carol.code, 0, carol.stderr);
      rememberLogin();
      st = await daemonStatus();
      assert.equal(st.pid, pid);
      assert.equal(st.developer, 'carol@example.com', 'the new login was picked up');
      const notHers = await cp();
      assert.equal(notHers.code, EXIT_CODES.not_found);
      assert.match(notHers.stderr, /no active "deploy-lambda" task session/, "alice's session is not carol's");

      writeFileSync(idToken, await stack.idp.loginAs('alice@example.com'), { mode: 0o600 });
      const alice = await broker(['login', '--id-token-file', idToken], env);
      assert.equal(alice.code, 0, alice.stderr);
      rememberLogin();
      st = await daemonStatus();
      assert.equal(st.pid, pid, 'never restarted');
      assert.equal(st.developer, 'alice@example.com');
      const back = await cp();
      assert.equal(back.code, 0, back.stderr);
    } finally {
      rmSync(join(idToken, '..'), { recursive: true, force: true });
    }
  });

  it('ending the task drops its credentials: credential_process fails with one clear line', async () => {
    const end = await broker(['end', 'deploy-lambda'], env);
    assert.equal(end.code, 0, end.stderr);
    const r = await cp();
    assert.equal(r.code, EXIT_CODES.not_found);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr.trim().split('\n').length, 1);
    assert.match(r.stderr, /^broker credential-process: no active "deploy-lambda" task session \(start one: broker task deploy-lambda\)\n$/);
  });

  it('leaves no secret on disk or in any log', () => {
    // Every credential STS issued during this file's runs — those served to `broker exec`'s
    // children and to the AWS CLI included, which this process never saw — as recorded on the wire.
    const fromSts = issuedSecrets(stack.proxy.requests);
    assert.equal(fromSts.length, assumeRoleCalls(stack.proxy.requests).length, 'every AssumeRole answer was captured');
    const stsSecrets = fromSts.flatMap((c) => [c.secretAccessKey, c.sessionToken]);
    for (const s of envSecrets) assert.ok(stsSecrets.includes(s), 'what exec --env handed its child is among them');
    assert.ok(deviceKeys.length >= 3, 'the device key of every login');
    const needles = [...secrets, ...stsSecrets, ...envSecrets, ...deviceKeys.flatMap(privateKeyForms)];
    const hits = filesContaining([m.home, m.runtimeDir, tmpdir(), stack.svc.dir], needles);
    assert.deepEqual(hits, []);
    assert.ok(fromSts.length >= 8, `${fromSts.length} issued credentials looked for`);
    // The broker's own tokens (the daemon's access tokens, which no test sees, and refresh tokens):
    // any JWT the service signed, wherever it is. The scan is shown to find one first.
    const control = mkdtempSync(join(tmpdir(), 'broker-scan-control-'));
    try {
      writeFileSync(join(control, 'leak.log'), `{"msg":"oops","token":"${[...secrets].find((x) => x.startsWith('eyJ'))}"}\n`);
      assert.equal(filesWithTokensFrom([control], stack.svc.url).length, 1, 'the token scan finds a broker token');
    } finally {
      rmSync(control, { recursive: true, force: true });
    }
    assert.deepEqual(filesWithTokensFrom([m.home, m.runtimeDir, tmpdir(), stack.svc.dir], stack.svc.url), []);
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
    assert.equal(r.code, EXIT_CODES.keychain_unavailable, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^broker credential-process: the broker daemon could not start: no OS keychain available: .*\n$/);
    const run2 = await broker(['daemon', 'run'], env);
    assert.equal(run2.code, EXIT_CODES.keychain_unavailable);
    assert.match(run2.stderr, /no OS keychain available/);
  });
});

describe('the daemon directory', () => {
  let keyring: TestKeyring;
  before(async () => { keyring = await startKeyring(); });
  after(async () => { await keyring?.stop(); });

  it('refuses a directory open to others, saying how to fix it', async () => {
    const m = makeTestHome();
    const dir = join(m.runtimeDir, 'agent-credential-broker');
    mkdirSync(dir, { recursive: true });
    chmodSync(dir, 0o755);
    const open = await broker(['daemon', 'run'], { ...m.env, ...keyring.env });
    assert.equal(open.code, EXIT_CODES.invalid_config);
    assert.match(open.stderr, /refusing to start: .* is open to group or others \(mode 0755\)/);
    assert.match(open.stderr, /chmod 700/);
    assert.ok(!existsSync(join(dir, 'daemon.sock')));
  });

  it('refuses a directory owned by someone else', { skip: process.getuid?.() === 0 ? false : 'needs root, to give the directory to another user (chown)' }, async () => {
    const m = makeTestHome();
    const dir = join(m.runtimeDir, 'agent-credential-broker');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chownSync(dir, 65534, 65534);
    try {
      const foreign = await broker(['daemon', 'run'], { ...m.env, ...keyring.env });
      assert.equal(foreign.code, EXIT_CODES.invalid_config);
      assert.match(foreign.stderr, /belongs to uid 65534, not to you/);
      assert.ok(!existsSync(join(dir, 'daemon.sock')));
    } finally {
      chownSync(dir, 0, 0);
    }
  });

  it('clients refuse a directory open to others, a symlink or another user\'s: nothing connects to its socket, nothing is started', async () => {
    const m = makeTestHome();
    const e = { ...m.env, ...keyring.env };
    const dir = join(m.runtimeDir, 'agent-credential-broker');
    // Whoever controls the directory can put a socket there that answers like the daemon.
    const elsewhere = mkdtempSync(join(tmpdir(), 'broker-impostor-'));
    chmodSync(elsewhere, 0o700);
    let connections = 0;
    const impostor = createServer((conn) => {
      connections++;
      conn.on('error', () => {});
      conn.on('data', () => conn.end(`${JSON.stringify({ ok: true, result: { Version: 1, AccessKeyId: 'ASIAIMPOSTOR00000001', SecretAccessKey: 'impostor', SessionToken: 'impostor', Expiration: new Date(Date.now() + 3600_000).toISOString() } })}\n`));
    });
    await new Promise<void>((r) => impostor.listen(join(elsewhere, 'daemon.sock'), r));
    const refused = async (problem: RegExp, where: string) => {
      const cp = await broker(['credential-process', '--task', 'deploy-lambda'], e);
      assert.equal(cp.code, EXIT_CODES.invalid_config, cp.stderr);
      assert.equal(cp.stdout, '');
      assert.match(cp.stderr, new RegExp(`^broker credential-process: refusing to connect to the broker daemon: ${problem.source}.*\\n$`));
      const status = await broker(['status'], e);
      assert.equal(status.code, EXIT_CODES.invalid_config);
      assert.match(status.stderr, new RegExp(`refusing to connect to the broker daemon: ${problem.source}`));
      assert.equal(connections, 0, 'nothing was sent to the socket');
      assert.ok(!existsSync(join(where, 'daemon.pid')), 'no daemon was started there');
    };
    try {
      mkdirSync(m.runtimeDir, { mode: 0o700 });
      symlinkSync(elsewhere, dir);
      await refused(/\S+ is a symbolic link/, elsewhere);
      rmSync(dir);
      renameSync(elsewhere, dir);
      chmodSync(dir, 0o755);
      await refused(/\S+ is open to group or others \(mode 0755\)/, dir);
      if (process.getuid?.() === 0) {
        chmodSync(dir, 0o700);
        chownSync(dir, 65534, 65534);
        await refused(/\S+ belongs to uid 65534, not to you/, dir);
        chownSync(dir, 0, 0);
      }
      // The control: the same socket in a directory that passes is used (so the refusals above were the check's).
      chmodSync(dir, 0o700);
      const cp = await broker(['credential-process', '--task', 'deploy-lambda'], e);
      assert.equal(cp.code, 0, cp.stderr);
      assert.match(cp.stdout, /ASIAIMPOSTOR00000001/);
      assert.equal(connections, 1);
    } finally {
      await new Promise<void>((r) => impostor.close(() => r()));
      rmSync(elsewhere, { recursive: true, force: true });
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
      assert.equal(cp.code, EXIT_CODES.not_logged_in);
      assert.match(cp.stderr, /^broker credential-process: no broker service configured|not logged in/);
    } finally {
      await m.stop();
    }
    assert.equal((await broker(['daemon', 'status'], e)).code, 1, 'stopped: status exits 1');
  });

  it('a second instance waits for a first that holds the lock but is not answering yet', async () => {
    const m = makeTestHome();
    const dir = join(m.runtimeDir, 'agent-credential-broker');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    // A first daemon that has just taken the lock (a live pid: this process) and is still starting.
    writeFileSync(join(dir, 'daemon.pid'), `${process.pid} 11111111-1111-4111-8111-111111111111\n`, { mode: 0o600 });
    const started = Date.now();
    const second = run(process.execPath, [BROKER_BIN, 'daemon', 'run'], { env: { ...process.env, ...m.env, ...keyring.env }, timeoutMs: 30_000 });
    await new Promise((r) => setTimeout(r, 1_500));
    const first = await fakeDaemon(join(dir, 'daemon.sock'), { pid: 4242 });
    try {
      const r = await second;
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /already running \(pid 4242, socket /);
      assert.ok(Date.now() - started >= 1_400, 'it waited instead of failing at once');
    } finally {
      await first.close();
    }
  });

  it('a daemon that listens but never answers: a second instance says so after its wait, without telling anyone to kill a pid', async () => {
    const m = makeTestHome();
    const dir = join(m.runtimeDir, 'agent-credential-broker');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeFileSync(join(dir, 'daemon.pid'), `${process.pid} 22222222-2222-4222-8222-222222222222\n`, { mode: 0o600 });
    const hung = await fakeDaemon(join(dir, 'daemon.sock'), { silent: true });
    try {
      const r = await run(process.execPath, [BROKER_BIN, 'daemon', 'run'], { env: { ...process.env, ...m.env, ...keyring.env }, timeoutMs: 40_000 });
      assert.equal(r.code, EXIT_CODES.conflict);
      assert.match(r.stderr, new RegExp(`another broker daemon \\(pid ${process.pid}\\) is listening on \\S+daemon\\.sock but has not answered for 10s`));
      assert.match(r.stderr, /hint: it may be waiting for the OS keychain to be unlocked; see its log: \S+daemon\.log/);
      assert.doesNotMatch(r.stderr, /kill/);
      assert.ok(existsSync(join(dir, 'daemon.pid')), 'a live holder keeps its lock');
    } finally {
      await hung.close();
    }
  });

  it('takes over the lock of a daemon that died before a reboot, though its pid now names a live process', async () => {
    const m = makeTestHome();
    const e = { ...m.env, ...keyring.env };
    const dir = join(m.runtimeDir, 'agent-credential-broker');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    try {
      // Its socket is still there (nobody listens), its pid file names pid 1, which exists.
      await deadSocket(join(dir, 'daemon.sock'));
      const lock = join(dir, 'daemon.pid');
      writeFileSync(lock, '1 33333333-3333-4333-8333-333333333333\n', { mode: 0o600 });
      const yesterday = new Date(Date.now() - 86_400_000);
      utimesSync(lock, yesterday, yesterday);
      const started = await broker(['daemon', 'start'], e);
      assert.equal(started.code, 0, started.stderr);
      assert.doesNotMatch(started.stderr, /kill/);
      const st = JSON.parse((await broker(['daemon', 'status', '--json'], e)).stdout) as DaemonState;
      assert.equal(st.running, true);
      assert.notEqual(st.pid, 1);
      assert.equal(readFileSync(lock, 'utf8').split(' ')[0], String(st.pid), 'the lock is the new daemon\'s');
      assert.equal((await broker(['daemon', 'stop'], e)).code, 0);

      // Taken a moment ago by a live process (this one) that never listens: not taken over at once
      // (it may be a daemon starting), but once it has had ample time.
      writeFileSync(lock, `${process.pid} 44444444-4444-4444-8444-444444444444\n`, { mode: 0o600 });
      const t0 = Date.now();
      const again = await broker(['daemon', 'start'], e);
      assert.equal(again.code, 0, again.stderr);
      assert.ok(Date.now() - t0 >= STALE_LOCK_MS - 1_000, `waited ${Date.now() - t0} ms before taking it over`);
      const st2 = JSON.parse((await broker(['daemon', 'status', '--json'], e)).stdout) as DaemonState;
      assert.equal(readFileSync(lock, 'utf8').split(' ')[0], String(st2.pid));
    } finally {
      await m.stop();
    }
  });

  it('the daemon cannot dump core and keeps no standing key in /proc/<pid>/environ, whether started on demand or in the foreground', async (t) => {
    const hard = spawnSync('/bin/sh', ['-c', 'ulimit -Hc'], { encoding: 'utf8' }).stdout.trim();
    if (hard === '0') {
      t.skip('the hard core-size limit here is 0: nothing could dump core, so the test would prove nothing');
      return;
    }
    const m = makeTestHome();
    // Started from a shell full of standing keys: the daemon runs with its allowlist only.
    const canaries = { AWS_SECRET_ACCESS_KEY: 'canary-daemon-secret-key', VAULT_TOKEN: 'hvs.canary-daemon', GITHUB_TOKEN: 'ghp_canarydaemon', NODE_OPTIONS: '--max-old-space-size=900' };
    const e = { ...process.env, ...m.env, ...keyring.env, ...canaries };
    const assertClean = (pid: number, how: string) => {
      const environ = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
      assert.ok(environ.includes(`HOME=${m.home}`), `${how}: what the daemon needs is there`);
      for (const [k, v] of Object.entries(canaries)) assert.ok(!environ.some((l) => l.includes(v)), `${how}: ${k} in /proc/<daemon>/environ`);
    };
    // Started from a shell that allows core dumps, as a developer's may.
    const allowCores = ['-c', 'ulimit -c unlimited && exec "$@"', 'sh', process.execPath, BROKER_BIN, 'daemon'];
    try {
      const started = await run('/bin/sh', [...allowCores, 'start'], { env: e });
      assert.equal(started.code, 0, started.stderr);
      const st = JSON.parse((await broker(['daemon', 'status', '--json'], m.env)).stdout) as DaemonState;
      assert.equal(coreLimits(st.pid!), '0 0', 'on demand (broker daemon start)');
      assertClean(st.pid!, 'on demand');
      assert.equal(st.memory?.protected, true, `memory protection, as the daemon read it back: ${JSON.stringify(st.memory)}`);
      assert.match((await broker(['daemon', 'status'], m.env)).stdout, /^memory {7}protected: not dumpable/m);
      assert.equal((await broker(['daemon', 'stop'], m.env)).code, 0);

      const fg = spawn('/bin/sh', [...allowCores, 'run'], { env: e, stdio: ['ignore', 'ignore', 'pipe'] });
      const exited = new Promise((r) => fg.once('exit', r));
      try {
        let fgState: DaemonState | undefined;
        const deadline = Date.now() + 20_000;
        while (!(fgState = JSON.parse((await broker(['daemon', 'status', '--json'], m.env)).stdout) as DaemonState).running) {
          assert.ok(Date.now() < deadline, 'the foreground daemon did not come up');
          await new Promise((r) => setTimeout(r, 100));
        }
        assert.equal(fgState.pid, fg.pid, 'the same process, re-executed in place');
        assert.equal(coreLimits(fgState.pid!), '0 0', 'in the foreground (broker daemon run)');
        assertClean(fgState.pid!, 'in the foreground');
      } finally {
        await broker(['daemon', 'stop'], m.env);
        await exited;
      }
    } finally {
      await m.stop();
    }
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

  it('makes a launchd agent that cannot dump core, and creates the directory of its log', () => {
    const home = mkdtempSync(join(tmpdir(), 'broker-launchd-'));
    try {
      const plan = unitPlan({ HOME: home }, 'darwin');
      assert.equal(plan.kind, 'launchd');
      assert.equal(plan.file, join(home, 'Library', 'LaunchAgents', 'dev.agent-credential-broker.daemon.plist'));
      // Parsed by a real plist parser (Python's plistlib), as launchd would read it.
      const parsePlist = (text: string) => {
        const parsed = spawnSync(join(VENV_BIN, 'python'), ['-c', 'import json, plistlib, sys; print(json.dumps(plistlib.loads(sys.stdin.buffer.read())))'], { input: text, encoding: 'utf8' });
        assert.equal(parsed.status, 0, parsed.stderr);
        return JSON.parse(parsed.stdout) as Record<string, unknown>;
      };
      const plist = parsePlist(plan.text);
      assert.deepEqual(plist.SoftResourceLimits, { Core: 0 });
      assert.deepEqual(plist.HardResourceLimits, { Core: 0 });
      assert.deepEqual((plist.ProgramArguments as string[]).slice(1), [BROKER_BIN, 'daemon', 'run']);
      const log = join(home, '.agent-credential-broker', 'run', 'daemon.log');
      assert.equal(plist.StandardErrorPath, log);
      assert.doesNotMatch(plan.text, /@[A-Z_]+@/, 'every placeholder filled');
      // macOS ignores XDG_RUNTIME_DIR (launchd and apps started from the Dock do not see a shell's
      // value): the agent's log, and so its socket, are where every client looks, whatever the shell has.
      const plistXdg = parsePlist(unitPlan({ HOME: home, XDG_RUNTIME_DIR: join(home, 'xdg-run') }, 'darwin').text);
      assert.equal(plistXdg.StandardErrorPath, log);
      assert.equal(runtimeDir({ HOME: home, XDG_RUNTIME_DIR: '/run/user/501' }, 'darwin'), join(home, '.agent-credential-broker', 'run'));
      assert.equal(runtimeDir({ HOME: home, XDG_RUNTIME_DIR: '/run/user/1000' }, 'linux'), '/run/user/1000/agent-credential-broker');

      const steps = installUnit(plan, false);
      assert.deepEqual(steps, []);
      assert.equal(readFileSync(plan.file, 'utf8'), plan.text);
      // launchd opens StandardErrorPath itself, before the daemon could create the directory.
      for (const d of [join(home, '.agent-credential-broker'), join(home, '.agent-credential-broker', 'run')]) {
        assert.equal(statSync(d).mode & 0o777, 0o700, d);
      }
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
