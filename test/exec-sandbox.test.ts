/**
 * `broker exec --sandbox` with an injected agent on real peers (a private gnome-keyring on its own
 * D-Bus, the test IdP, the broker service, moto as STS, the real daemon, bubblewrap): the script
 * inside gets its own task's credentials through the container endpoint and nothing else; with
 * bubblewrap missing, exec fails with 125 and runs nothing.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EXEC_EXIT } from '../broker/errors.js';
import { broker, deviceLogin, run, makeTestHome, type TestHome } from './peers/cli.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { BROKER_BIN, REPO_ROOT, VENV_BIN } from './peers/paths.js';
import { startStack, type Stack } from './peers/stack.js';

const KEY_NAME = 'broker-sandbox-test:planted';

describe('broker exec --sandbox: the injected agent', () => {
  let stack: Stack;
  let keyring: TestKeyring;
  let m: TestHome;
  let env: Record<string, string>;
  let project: string;
  const secrets: string[] = [];
  const sessions: Record<string, { id: string; roleSessionName: string }> = {};
  // What the agent needs from outside: node, the broker CLI and the AWS CLI (read-only).
  const roBinds = [...new Set([REPO_ROOT, realpathSync(join(REPO_ROOT, '.peers')), realpathSync(join(REPO_ROOT, 'node_modules')), realpathSync(process.execPath).replace(/\/bin\/node$/, ''),
    dirname(dirname(realpathSync(join(VENV_BIN, 'python3'))))])]
    .flatMap((p) => ['--ro-bind', p]);
  // In a fresh session keyring holding a possessor-only key, as the kernel-keyring login store keeps
  // its login (broker/kernel-keyring.ts); "outer-key=yes" shows it is readable outside the sandbox.
  const sandboxed = (script: string, input: string, extra: Record<string, string> = {}) =>
    run('keyctl', ['session', '-', 'sh', '-c',
      `id=$(printf planted-kernel-secret | keyctl padd user ${KEY_NAME} @s) && keyctl setperm "$id" 0x3f000000 && keyctl pipe "$id" >/dev/null && echo outer-key=yes; exec "$@"`, 'sh',
      process.execPath, BROKER_BIN, 'exec', 'deploy-lambda', '--sandbox', ...roBinds, '--', 'sh', '-c', script],
    { cwd: project, env: { ...process.env, ...env, ...extra }, input, timeoutMs: 120_000 });

  before(async () => {
    stack = await startStack();
    keyring = await startKeyring();
    m = makeTestHome();
    env = { ...m.env, ...keyring.env, PATH: `${VENV_BIN}:${process.env.PATH}` };
    project = mkdtempSync(join(tmpdir(), 'broker-project-'));
    const login = await deviceLogin(stack.svc.url, env, stack.idp, 'alice@example.com');
    assert.equal(login.code, 0, login.stderr);
    for (const [template, param] of [['deploy-lambda', 'function=checkout-api'], ['read-cloudwatch-logs', 'logGroup=/aws/lambda/checkout-api']] as const) {
      const t = await broker(['task', template, '--param', param, '--json'], env);
      assert.equal(t.code, 0, t.stderr);
      sessions[template] = (JSON.parse(t.stdout) as { session: { id: string; roleSessionName: string } }).session;
    }
    // The other task's credentials, the login (refresh token, DPoP key): none may be readable inside.
    const other = await broker(['credential-process', '--task', 'read-cloudwatch-logs'], env);
    assert.equal(other.code, 0, other.stderr);
    const own = await broker(['credential-process', '--task', 'deploy-lambda'], env);
    assert.equal(own.code, 0, own.stderr);
    const oc = JSON.parse(other.stdout) as { SecretAccessKey: string; SessionToken: string };
    const stored = JSON.parse(keyring.read(`login:${stack.svc.url}`)!) as { refreshToken: string };
    const dpop = JSON.parse(keyring.read(`device-key:${stack.svc.url}`)!) as { d: string };
    secrets.push(oc.SecretAccessKey, oc.SessionToken, stored.refreshToken, dpop.d);
  });
  after(async () => {
    await m?.stop();
    await keyring?.stop();
    await stack?.stop();
    if (project) rmSync(project, { recursive: true, force: true });
  });

  it('gets its own task\'s identity and cannot reach the socket, D-Bus, the keychain, the kernel keyring login, other processes, other tasks or any secret', async () => {
    const socketDir = join(m.runtimeDir, 'agent-credential-broker');
    const bus = keyring.env.DBUS_SESSION_BUS_ADDRESS.replace(/^unix:path=/, '').replace(/,.*$/, '');
    const script = [
      'read S1; read S2; read S3; read S4',
      `echo "arn=$(aws sts get-caller-identity --endpoint-url ${stack.moto.url} --query Arn --output text 2>&1)"`,
      'echo "tokenfile=$AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"',
      `test -e ${socketDir} && echo socket=yes || echo socket=no`,
      `test -e ${m.runtimeDir} && echo runtime=yes || echo runtime=no`,
      `test -e ${bus} && echo bus=yes || echo bus=no`,
      'echo "dbus=${DBUS_SESSION_BUS_ADDRESS:-none}"',
      `test -e ${join(m.home, '.aws')} && echo aws=yes || echo aws=no`,
      `test -e ${join(m.home, '.config', 'agent-credential-broker')} && echo config=yes || echo config=no`,
      `keyctl pipe "$(keyctl search @s user ${KEY_NAME} 2>/dev/null)" 2>/dev/null | grep -q planted && echo kernelkey=yes || echo kernelkey=no`,
      `test -e /proc/${process.pid} && echo testpid=yes || echo testpid=no`,
      'echo "pids=$(ls /proc | grep -c "^[0-9]")"',
      `${process.execPath} ${BROKER_BIN} credential-process --task read-cloudwatch-logs >/dev/null 2>&1; echo "other=$?"`,
      'echo "hits=$(grep -rlsF -e "$S1" -e "$S2" -e "$S3" -e "$S4" "$HOME" /tmp /var/tmp /run /etc "$PWD" 2>/dev/null | wc -l)"',
    ].join('\n');
    const r = await sandboxed(script, secrets.join('\n') + '\n');
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const out = Object.fromEntries(r.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    assert.match(out.arn!, new RegExp(`assumed-role/broker-deploy-lambda/${sessions['deploy-lambda']!.roleSessionName}$`), out.arn);
    assert.equal(out.tokenfile, '/run/agent-credential-broker/token');
    assert.deepEqual(
      { socket: out.socket, runtime: out.runtime, bus: out.bus, dbus: out.dbus, aws: out.aws, config: out.config, kernelkey: out.kernelkey, testpid: out.testpid },
      { socket: 'no', runtime: 'no', bus: 'no', dbus: 'none', aws: 'no', config: 'no', kernelkey: 'no', testpid: 'no' },
    );
    assert.ok(Number(out.pids) < 10, `only the sandbox's own processes in /proc: ${out.pids}`);
    assert.notEqual(out.other, '0', 'no other task\'s credentials from inside');
    assert.equal(out.hits, '0', 'no secret in a readable file');
    assert.equal(out['outer-key'], 'yes', 'the planted key is readable outside: the check above is not vacuous');
  });

  it('where bubblewrap is missing, exits 125 and runs nothing', async () => {
    const r = await sandboxed('echo RAN', '', { BROKER_BWRAP: join(project, 'no-such-bwrap') });
    assert.equal(r.code, EXEC_EXIT.failed, r.stderr);
    assert.doesNotMatch(r.stdout, /RAN/);
    assert.match(r.stderr, /bubblewrap .* is not installed; the command was not run/);
  });
});
