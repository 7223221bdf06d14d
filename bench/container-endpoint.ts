/**
 * bench/container-endpoint: what the container credentials endpoint of `broker exec` costs an agent,
 * in one run on the local peers (moto as STS, the test IdP, the broker service, a throwaway login).
 * A script, not a test: it prints figures.
 *
 * 1. The same `aws sts get-caller-identity` against moto, N runs each (interleaved, so drift hits
 *    all alike), with the task's credentials
 *      - as static keys in the environment (AWS_ACCESS_KEY_ID/…: the floor, no credential lookup),
 *      - through the container endpoint, as inside `broker exec` (AWS_CONTAINER_CREDENTIALS_FULL_URI
 *        and the exec's token file, from a `broker exec` held open for the run),
 *      - through credential_process (AWS_PROFILE=broker-deploy-lambda, `broker exec --credential-process`).
 *    Goal (issue 13): the endpoint within 2% of static keys (p50).
 * 2. The endpoint alone: M GETs on loopback, one at a time, each on a new connection (as the SDKs
 *    fetch), and again on one kept-alive connection; p50/p95. Goal: p50 under 1 ms.
 *
 *   bench/container-endpoint [--json] [--runs N] [--gets M]
 */
import { spawn, spawnSync } from 'node:child_process';
import { devNull } from 'node:os';
import { Agent, request } from 'node:http';
import { join } from 'node:path';
import { BROKER_BIN, VENV_BIN } from '../test/peers/paths.js';
import { broker, deviceLogin, makeTestHome } from '../test/peers/cli.js';
import { startStack } from '../test/peers/stack.js';

interface Stats { p50: number; p95: number; mean: number; min: number; max: number; n: number }

function stats(ms: number[]): Stats {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]!;
  return { p50: q(0.5), p95: q(0.95), mean: s.reduce((a, b) => a + b, 0) / s.length, min: s[0]!, max: s.at(-1)!, n: s.length };
}

function timeSync(argv: string[], env: NodeJS.ProcessEnv, expect: RegExp): number {
  const t = process.hrtime.bigint();
  const r = spawnSync(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  if (r.status !== 0 || !expect.test(r.stdout.toString())) throw new Error(`${argv.join(' ')} failed: ${r.stderr.toString()}${r.stdout.toString()}`);
  return ms;
}

function getOnce(url: string, token: string, agent: Agent | false): Promise<number> {
  return new Promise((resolve, reject) => {
    const t = process.hrtime.bigint();
    const req = request(url, { headers: { Authorization: token }, agent }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve(Number(process.hrtime.bigint() - t) / 1e6) : reject(new Error(`status ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end();
  });
}

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const runs = arg('--runs', 50);
  const gets = arg('--gets', 1000);
  const stack = await startStack();
  const machine = makeTestHome('broker-bench-');
  let held: ReturnType<typeof spawn> | undefined;
  try {
    const login = await deviceLogin(stack.svc.url, machine.env, stack.idp, 'alice@example.com');
    if (login.code !== 0) throw new Error(`login failed: ${login.stderr}`);
    const task = await broker(['task', 'deploy-lambda', '--param', 'function=checkout-api'], machine.env);
    if (task.code !== 0) throw new Error(`task failed: ${task.stderr}`);
    const conf = await broker(['configure', 'aws'], machine.env);
    if (conf.code !== 0) throw new Error(`configure aws failed: ${conf.stderr}`);

    // A broker exec held open for the run: its endpoint URL and token file, as its agent sees them.
    held = spawn(process.execPath, [BROKER_BIN, 'exec', 'deploy-lambda', '--agent', 'bench', '--', 'sh', '-c',
      'printf "%s\\n%s\\n" "$AWS_CONTAINER_CREDENTIALS_FULL_URI" "$AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"; read x'],
    { env: { ...process.env, ...machine.env }, stdio: ['pipe', 'pipe', 'inherit'] });
    const [url, tokenFile] = await new Promise<string[]>((resolve, reject) => {
      let out = '';
      held!.stdout!.on('data', (c: Buffer) => { out += c.toString(); const l = out.split('\n'); if (l.length > 2) resolve(l.slice(0, 2)); });
      held!.once('exit', (c) => reject(new Error(`broker exec ended early (${c})`)));
    });
    const token = (await import('node:fs')).readFileSync(tokenFile!, 'utf8');
    // The static keys: the endpoint's own answer (the session's current credentials).
    const creds = await new Promise<{ AccessKeyId: string; SecretAccessKey: string; Token: string }>((resolve, reject) => {
      request(url!, { headers: { Authorization: token } }, (res) => {
        let b = '';
        res.on('data', (c: Buffer) => { b += c.toString(); });
        res.on('end', () => resolve(JSON.parse(b)));
      }).on('error', reject).end();
    });

    const base: NodeJS.ProcessEnv = {
      ...process.env, ...machine.env, AWS_SHARED_CREDENTIALS_FILE: devNull, AWS_EC2_METADATA_DISABLED: 'true', AWS_REGION: 'eu-west-1', AWS_DEFAULT_REGION: 'eu-west-1',
    };
    for (const k of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE']) delete base[k];
    const envs: Record<'static' | 'container' | 'credentialProcess', NodeJS.ProcessEnv> = {
      static: { ...base, AWS_CONFIG_FILE: devNull, AWS_ACCESS_KEY_ID: creds.AccessKeyId, AWS_SECRET_ACCESS_KEY: creds.SecretAccessKey, AWS_SESSION_TOKEN: creds.Token },
      container: { ...base, AWS_CONFIG_FILE: devNull, AWS_CONTAINER_CREDENTIALS_FULL_URI: url!, AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: tokenFile! },
      credentialProcess: { ...base, AWS_PROFILE: 'broker-deploy-lambda' },
    };
    const aws = [join(VENV_BIN, 'aws'), 'sts', 'get-caller-identity', '--endpoint-url', stack.moto.url, '--query', 'Arn', '--output', 'text'];
    const arn = /assumed-role\/broker-deploy-lambda\//;
    const modes = Object.keys(envs) as (keyof typeof envs)[];
    for (let i = 0; i < 3; i++) for (const m of modes) timeSync(aws, envs[m], arn); // warm-up
    const times: Record<keyof typeof envs, number[]> = { static: [], container: [], credentialProcess: [] };
    for (let i = 0; i < runs; i++) {
      // A different order each round, so no mode always follows another.
      const order = [...modes.slice(i % 3), ...modes.slice(0, i % 3)];
      for (const m of order) times[m].push(timeSync(aws, envs[m], arn));
    }

    for (let i = 0; i < 50; i++) await getOnce(url!, token, false); // warm-up
    const fresh: number[] = [];
    for (let i = 0; i < gets; i++) fresh.push(await getOnce(url!, token, false));
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const kept: number[] = [];
    for (let i = 0; i < gets; i++) kept.push(await getOnce(url!, token, agent));
    agent.destroy();

    const s = { static: stats(times.static), container: stats(times.container), credentialProcess: stats(times.credentialProcess) };
    const result = {
      node: process.version,
      cpus: (await import('node:os')).cpus().length,
      awsCli: spawnSync(join(VENV_BIN, 'aws'), ['--version'], { encoding: 'utf8' }).stdout.trim() || spawnSync(join(VENV_BIN, 'aws'), ['--version'], { encoding: 'utf8' }).stderr.trim(),
      getCallerIdentity: {
        runs, ...s,
        containerVsStaticP50: s.container.p50 / s.static.p50 - 1,
        containerVsStaticMean: s.container.mean / s.static.mean - 1,
        credentialProcessVsStaticP50: s.credentialProcess.p50 / s.static.p50 - 1,
      },
      endpoint: { gets, newConnection: stats(fresh), keepAlive: stats(kept) },
      goals: 'container p50 within 2% of static; endpoint p50 < 1 ms',
    };
    if (json) {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    } else {
      const f = (x: Stats) => `p50 ${x.p50.toFixed(1).padStart(7)} ms   p95 ${x.p95.toFixed(1).padStart(7)} ms   mean ${x.mean.toFixed(1).padStart(7)} ms`;
      const g = (x: Stats) => `p50 ${x.p50.toFixed(3)} ms   p95 ${x.p95.toFixed(3)} ms   max ${x.max.toFixed(3)} ms`;
      const pc = (r: number) => `${r >= 0 ? '+' : ''}${(r * 100).toFixed(1)}%`;
      const c = result.getCallerIdentity;
      process.stdout.write([
        `node ${result.node}, ${result.cpus} CPUs, ${result.awsCli}`,
        `aws sts get-caller-identity against moto, ${runs} runs each (interleaved)`,
        `  static keys in the environment  ${f(s.static)}`,
        `  container endpoint (exec)       ${f(s.container)}   (${pc(c.containerVsStaticP50)} p50, ${pc(c.containerVsStaticMean)} mean vs static)`,
        `  credential_process              ${f(s.credentialProcess)}   (${pc(c.credentialProcessVsStaticP50)} p50 vs static)`,
        `the endpoint alone, ${gets} sequential GETs on 127.0.0.1`,
        `  new connection per GET          ${g(result.endpoint.newConnection)}`,
        `  one kept-alive connection       ${g(result.endpoint.keepAlive)}`,
        `goals: ${result.goals}`,
        '',
      ].join('\n'));
    }
  } finally {
    held?.stdin?.end();
    await machine.stop();
    await stack.stop();
  }
}

await main();
