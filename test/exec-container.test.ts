/**
 * `broker exec`'s container credentials endpoint on real peers (a private gnome-keyring, the test
 * IdP, the broker service, moto as STS): inside exec the AWS CLI, boto3 and the JS SDK v3 get the
 * task's identity from the daemon's loopback endpoint with the exec's own token; a missing, wrong
 * or other exec's token gets 401; the token and its file die with the exec, also when the exec is
 * killed; `--credential-process` keeps the profile; nothing secret is left on disk or in the log.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EXEC_EXIT } from '../broker/errors.js';
import { broker, deviceLogin, makeTestHome, run, type TestHome } from './peers/cli.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { BROKER_BIN, REPO_ROOT, VENV_BIN } from './peers/paths.js';
import { filesContaining, filesWithTokensFrom } from './peers/secret-scan.js';
import { startStack, type Stack } from './peers/stack.js';

interface Held { url: string; tokenFile: string; token: string; exec: ChildProcess; end(): Promise<void> }
interface Answer { status: number; body: Record<string, unknown>; headers: Record<string, string | string[] | undefined> }

/** A GET (or another method) to the endpoint with the given headers, from this process. */
function get(url: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { text += c; });
      res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(text) as Record<string, unknown>, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

const stsPath = createRequire(join(REPO_ROOT, 'package.json')).resolve('@aws-sdk/client-sts');

describe('broker exec: the container credentials endpoint', () => {
  let stack: Stack;
  let keyring: TestKeyring;
  let m: TestHome;
  let env: Record<string, string>;
  const secrets = new Set<string>();
  const sessions: Record<string, { id: string; roleSessionName: string }> = {};
  const running = new Set<ChildProcess>();

  /**
   * `broker exec <template>` running a shell that prints the endpoint's URL, the token file and the
   * token (to this test's memory, never to a file), then waits for its stdin to close.
   */
  const hold = async (template: string): Promise<Held> => {
    const exec = spawn(process.execPath, [BROKER_BIN, 'exec', template, '--', 'sh', '-c',
      'printf "%s\\n%s\\n%s\\n" "$AWS_CONTAINER_CREDENTIALS_FULL_URI" "$AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" "$(cat "$AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")"; read x'],
    { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    running.add(exec);
    let out = '';
    let err = '';
    exec.stderr!.on('data', (c: Buffer) => { err += c.toString(); });
    const lines = await new Promise<string[]>((resolve, reject) => {
      exec.stdout!.on('data', (c: Buffer) => {
        out += c.toString();
        const l = out.split('\n');
        if (l.length > 3) resolve(l.slice(0, 3));
      });
      exec.once('exit', (code) => reject(new Error(`broker exec ended (${code}) before printing: ${err}`)));
    });
    const [url, tokenFile, token] = lines as [string, string, string];
    secrets.add(token);
    const gone = new Promise<void>((r) => exec.once('exit', () => r()));
    return { url, tokenFile, token, exec, end: async () => { exec.stdin!.end(); await gone; running.delete(exec); } };
  };
  const credentialsOf = async (h: Held) => {
    const r = await get(h.url, { Authorization: h.token });
    assert.equal(r.status, 200, JSON.stringify(r.body.Message));
    secrets.add(String(r.body.SecretAccessKey));
    secrets.add(String(r.body.Token));
    return r.body as { AccessKeyId: string; SecretAccessKey: string; Token: string; Expiration: string };
  };
  const arnWith = async (c: { AccessKeyId: string; SecretAccessKey: string; Token: string }) => {
    const { STSClient, GetCallerIdentityCommand } = createRequire(import.meta.url)(stsPath) as typeof import('@aws-sdk/client-sts');
    const sts = new STSClient({ endpoint: stack.moto.url, region: 'us-east-1', credentials: { accessKeyId: c.AccessKeyId, secretAccessKey: c.SecretAccessKey, sessionToken: c.Token } });
    return (await sts.send(new GetCallerIdentityCommand({}))).Arn;
  };
  const refused = (r: Answer, status: number) => {
    // The body's Code and Message only: were it a credential, the test log must not show it.
    assert.equal(r.status, status, `${String(r.body.Code)}: ${String(r.body.Message)}`);
    assert.equal(typeof r.body.Message, 'string');
    assert.equal(r.body.AccessKeyId, undefined, 'no credential in a refusal');
    assert.equal(r.body.SecretAccessKey, undefined);
  };

  before(async () => {
    stack = await startStack();
    keyring = await startKeyring();
    m = makeTestHome();
    env = { ...m.env, ...keyring.env, PATH: `${VENV_BIN}:${process.env.PATH}` };
    const login = await deviceLogin(stack.svc.url, env, stack.idp, 'alice@example.com');
    assert.equal(login.code, 0, login.stderr);
    for (const [template, param] of [['deploy-lambda', 'function=checkout-api'], ['read-cloudwatch-logs', 'logGroup=/aws/lambda/checkout-api']] as const) {
      const t = await broker(['task', template, '--param', param, '--json'], env);
      assert.equal(t.code, 0, t.stderr);
      sessions[template] = (JSON.parse(t.stdout) as { session: { id: string; roleSessionName: string } }).session;
    }
  });
  after(async () => {
    for (const c of running) { try { process.kill(-c.pid!, 'SIGKILL'); } catch { /* gone */ } }
    await m?.stop();
    await keyring?.stop();
    await stack?.stop();
  });

  it('the AWS CLI, boto3 and the JS SDK v3 inside exec get the task\'s identity from the endpoint; a [default] profile with standing keys and a proxy do not get in the way', async () => {
    // Standing keys in the config file's default profile: every SDK tries them before the container
    // endpoint. A proxy that answers nothing: the endpoint (and moto) must be reached directly.
    writeFileSync(env.AWS_CONFIG_FILE!, '[default]\naws_access_key_id = AKIASTANDINGCONFIG01\naws_secret_access_key = standing-config-secret\n', { mode: 0o600 });
    const js = `const { STSClient, GetCallerIdentityCommand } = require(${JSON.stringify(stsPath)});
      new STSClient({ endpoint: ${JSON.stringify(stack.moto.url)} }).send(new GetCallerIdentityCommand({})).then((r) => console.log(r.Arn), (e) => { console.error(String(e)); process.exit(1); });`;
    const py = `import boto3; print(boto3.client("sts", endpoint_url=${JSON.stringify(stack.moto.url)}).get_caller_identity()["Arn"])`;
    const r = await broker(['exec', 'deploy-lambda', '--', 'sh', '-c', [
      'echo "${AWS_PROFILE:-none} $AWS_CONFIG_FILE $AWS_REGION $NO_PROXY"',
      `aws sts get-caller-identity --endpoint-url ${stack.moto.url} --query Arn --output text`,
      `python3 -c '${py}'`,
      `"${process.execPath}" -e '${js}'`,
    ].join(' && ')], { ...env, AWS_PROFILE: 'admin', HTTP_PROXY: 'http://127.0.0.1:9', HTTPS_PROXY: 'http://127.0.0.1:9', NODE_USE_ENV_PROXY: '1' });
    assert.equal(r.code, 0, r.stderr);
    const [vars, ...arns] = r.stdout.trim().split('\n');
    const expected = `arn:aws:sts::123456789012:assumed-role/broker-deploy-lambda/${sessions['deploy-lambda']!.roleSessionName}`;
    assert.deepEqual(arns, [expected, expected, expected], 'AWS CLI, boto3, JS SDK v3: the task\'s assumed role');
    assert.equal(vars, 'none /dev/null eu-west-1 127.0.0.1', 'no profile, no config file, the task\'s region, loopback not proxied');
    assert.doesNotMatch(r.stderr, /added profile/, 'no credential_process profile is needed');
    // What reads the config file inside exec reads /dev/null; what writes it refuses, and /dev/null stays a device.
    const nested = await broker(['exec', 'deploy-lambda', '--', 'sh', '-c', `"${process.execPath}" "${BROKER_BIN}" configure aws; echo "exit=$?"`], env);
    assert.match(nested.stdout, /^exit=3$/m, nested.stderr);
    assert.match(nested.stderr, /\/dev\/null is not a regular file/);
    assert.ok(statSync('/dev/null').isCharacterDevice());
    assert.ok(!readFileSync(env.AWS_CONFIG_FILE!, 'utf8').includes('broker-deploy-lambda'), '~/.aws/config left alone');
  });

  it('serves each exec its own task only: a missing, wrong or other exec\'s token gets 401, an unknown path 404; the token file is 0600 in the daemon\'s directory', async () => {
    const a = await hold('deploy-lambda');
    const b = await hold('read-cloudwatch-logs');
    try {
      assert.match(a.url, /^http:\/\/127\.0\.0\.1:\d+\/v1\/exec\/[A-Za-z0-9_-]{22}\/credentials$/);
      assert.ok(Buffer.from(a.token, 'base64url').length >= 32, 'at least 32 random bytes');
      const st = statSync(a.tokenFile);
      assert.equal(st.mode & 0o777, 0o600);
      assert.equal(st.uid, process.getuid!());
      assert.equal(statSync(dirname(a.tokenFile)).mode & 0o777, 0o700);
      assert.equal(dirname(dirname(a.tokenFile)), join(m.runtimeDir, 'agent-credential-broker'), 'inside the daemon\'s own directory');

      const ca = await credentialsOf(a);
      const cb = await credentialsOf(b);
      assert.ok(Date.parse(ca.Expiration) - Date.now() > 15 * 60_000, 'handed out with more than 15 min left');
      assert.equal(await arnWith(ca), `arn:aws:sts::123456789012:assumed-role/broker-deploy-lambda/${sessions['deploy-lambda']!.roleSessionName}`);
      assert.equal(await arnWith(cb), `arn:aws:sts::123456789012:assumed-role/broker-read-cloudwatch-logs/${sessions['read-cloudwatch-logs']!.roleSessionName}`);

      refused(await get(a.url), 401);
      assert.match(String((await get(a.url)).headers['www-authenticate']), /^Bearer /);
      refused(await get(a.url, { Authorization: randomBytes(32).toString('base64url') }), 401);
      refused(await get(a.url, { Authorization: `Bearer ${a.token}` }), 401);
      refused(await get(a.url, { Authorization: a.token.slice(0, -1) }), 401);
      refused(await get(a.url, { Authorization: b.token }), 401);
      refused(await get(b.url, { Authorization: a.token }), 401);
      const port = new URL(a.url).port;
      for (const path of ['/', '/latest/meta-data/iam/security-credentials/', '/v1/exec/', `${new URL(a.url).pathname}/x`]) {
        refused(await get(`http://127.0.0.1:${port}${path}`, { Authorization: a.token }), 404);
      }
      refused(await get(a.url, { Authorization: a.token }, 'POST'), 405);
      // DNS rebinding: the same socket, reached under another name.
      refused(await get(a.url, { Authorization: a.token, Host: `attacker.example:${port}` }), 403);

      const ping = JSON.parse((await broker(['daemon', 'status', '--json'], env)).stdout) as { containerEndpoint?: { execs: number } };
      assert.equal(ping.containerEndpoint?.execs, 2);
      assert.match((await broker(['daemon', 'status'], env)).stdout, /^endpoint {5}http:\/\/127\.0\.0\.1:\d+\/: 2 broker exec\(s\) with a token; \d+ served, \d+ refused$/m);
      const log = readFileSync(join(m.runtimeDir, 'agent-credential-broker', 'daemon.log'), 'utf8');
      assert.ok(!log.includes(a.token) && !log.includes(b.token), 'no token in the daemon log');

      // The exec ends: its token is refused, its file gone; the other exec is served still.
      await a.end();
      refused(await get(a.url, { Authorization: a.token }), 401);
      assert.equal(existsSync(a.tokenFile), false, 'the token file is removed when the exec ends');
      assert.equal((await credentialsOf(b)).AccessKeyId, cb.AccessKeyId);

      // Killed outright (no clean-up of its own): the daemon sees its connection close.
      process.kill(b.exec.pid!, 'SIGKILL');
      const deadline = Date.now() + 15_000;
      while (existsSync(b.tokenFile) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.equal(existsSync(b.tokenFile), false, 'the token file is removed when the exec is killed');
      refused(await get(b.url, { Authorization: b.token }), 401);
    } finally {
      for (const h of [a, b]) { try { process.kill(-h.exec.pid!, 'SIGKILL'); } catch { /* gone */ } }
    }
  });

  it('--credential-process keeps the task\'s AWS profile, and cannot be combined with --env', async () => {
    const r = await broker(['exec', 'deploy-lambda', '--credential-process', '--', 'sh', '-c',
      `echo "$AWS_PROFILE \${AWS_CONTAINER_CREDENTIALS_FULL_URI:-none}"; exec aws sts get-caller-identity --endpoint-url ${stack.moto.url} --query Arn --output text`], env);
    assert.equal(r.code, 0, r.stderr);
    const [vars, arn] = r.stdout.trim().split('\n');
    assert.equal(vars, 'broker-deploy-lambda none');
    assert.equal(arn, `arn:aws:sts::123456789012:assumed-role/broker-deploy-lambda/${sessions['deploy-lambda']!.roleSessionName}`);
    const both = await broker(['exec', 'deploy-lambda', '--credential-process', '--env', '--', 'sh', '-c', 'echo ran'], env);
    assert.equal(both.code, EXEC_EXIT.failed);
    assert.equal(both.stdout, '');
    assert.match(both.stderr, /--env and --credential-process cannot be used together/);
  });

  it('serves the session the exec ran under only: after broker end and a new task, its token gets 409, never the new session\'s credentials', async () => {
    const a = await hold('deploy-lambda');
    try {
      await credentialsOf(a);
      assert.equal((await broker(['end', 'deploy-lambda'], env)).code, 0);
      const t = await broker(['task', 'deploy-lambda', '--param', 'function=checkout-api', '--json'], env);
      assert.equal(t.code, 0, t.stderr);
      const r = await get(a.url, { Authorization: a.token });
      refused(r, 409);
      assert.match(String(r.body.Message), /task session this command was started under has ended/);
    } finally {
      await a.end();
    }
  });

  it('leaves no token, secret key or session token on disk, nor any broker token', async () => {
    const r = await run('sh', ['-c', 'ls -A "$1"', 'sh', join(m.runtimeDir, 'agent-credential-broker', 'exec-tokens')]);
    assert.equal(r.stdout, '', 'no token file is left behind');
    assert.deepEqual(filesContaining([m.home], [...secrets]), []);
    assert.deepEqual(filesWithTokensFrom([m.home], stack.svc.url), []);
  });
});
