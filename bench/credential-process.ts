/**
 * bench/credential-process: how long `broker credential-process` takes, next to `node -e 0` on the
 * same Node in the same run (the floor any Node CLI pays). A script, not a test: it prints figures.
 *
 * It starts the local peers (moto, the test IdP, the broker service), logs a throwaway developer in,
 * starts a deploy-lambda task (so the daemon holds credentials), then measures
 *   - 200 sequential runs of each command (interleaved, so drift hits all alike), and
 *   - 50 concurrent runs of each (one burst per command),
 * and prints p50/p95 and the ratio of each p50 to that of `node -e 0`. Target (issue 3): sequential
 * p50 ≤ 1.4× node -e 0. Every command is run by this process's own Node (process.execPath), which
 * must be Node 24 or later (bench/credential-process runs .peers/node).
 *
 * A third command gives the floor for any design with a daemon: a bare Node client, inline, that
 * sends the same request on the same socket and prints the answer (no module of ours at all).
 *
 *   bench/credential-process [--json] [--sequential N] [--concurrent N]
 */
import { spawn, spawnSync } from 'node:child_process';
import { socketPath } from '../broker/daemon/socket.cjs';
import { BROKER_BIN } from '../test/peers/paths.js';
import { broker, deviceLogin, makeTestHome } from '../test/peers/cli.js';
import { startStack } from '../test/peers/stack.js';

interface Stats { p50: number; p95: number; min: number; max: number; n: number }

function stats(ms: number[]): Stats {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]!;
  return { p50: q(0.5), p95: q(0.95), min: s[0]!, max: s.at(-1)!, n: s.length };
}

function timeSync(argv: string[], env: NodeJS.ProcessEnv): number {
  const t = process.hrtime.bigint();
  const r = spawnSync(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed: ${r.stderr.toString()}`);
  return ms;
}

function timeConcurrent(argv: string[], env: NodeJS.ProcessEnv, n: number): Promise<number[]> {
  return Promise.all(Array.from({ length: n }, () => new Promise<number>((resolve, reject) => {
    const t = process.hrtime.bigint();
    const c = spawn(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    c.once('exit', (code) => (code === 0 ? resolve(Number(process.hrtime.bigint() - t) / 1e6) : reject(new Error(`${argv.join(' ')}: ${err}`))));
  })));
}

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

async function main(): Promise<void> {
  const major = Number(process.versions.node.split('.')[0]);
  if (major < 24) throw new Error(`bench/credential-process needs Node 24 or later (the project's .peers/node), not ${process.version}: run it as bench/credential-process`);
  const json = process.argv.includes('--json');
  const sequential = arg('--sequential', 200);
  const concurrent = arg('--concurrent', 50);
  const stack = await startStack();
  const machine = makeTestHome('broker-bench-');
  try {
    const login = await deviceLogin(stack.svc.url, machine.env, stack.idp, 'alice@example.com');
    if (login.code !== 0) throw new Error(`login failed: ${login.stderr}`);
    const task = await broker(['task', 'deploy-lambda', '--param', 'function=checkout-api'], machine.env);
    if (task.code !== 0) throw new Error(`task failed: ${task.stderr}`);
    const env = { ...process.env, ...machine.env };
    const baseline = [process.execPath, '-e', '0'];
    const cp = [process.execPath, BROKER_BIN, 'credential-process', '--task', 'deploy-lambda'];
    const bare = [process.execPath, '-e', `const s=require('node:net').connect(${JSON.stringify(socketPath(env))});let b='';`
      + `s.on('connect',()=>s.write('{"op":"credentials","task":"deploy-lambda"}\\n'));s.setEncoding('utf8');`
      + `s.on('data',d=>{b+=d;if(b.includes('\\n')){process.stdout.write(JSON.stringify(JSON.parse(b).result)+'\\n');s.end();}})`];
    // Warm-up: file cache, the daemon's first answer.
    for (let i = 0; i < 10; i++) { timeSync(baseline, env); timeSync(cp, env); timeSync(bare, env); }

    const seq = { baseline: [] as number[], cp: [] as number[], bare: [] as number[] };
    for (let i = 0; i < sequential; i++) {
      seq.baseline.push(timeSync(baseline, env));
      seq.cp.push(timeSync(cp, env));
      seq.bare.push(timeSync(bare, env));
    }
    const conc = {
      baseline: await timeConcurrent(baseline, env, concurrent),
      cp: await timeConcurrent(cp, env, concurrent),
      bare: await timeConcurrent(bare, env, concurrent),
    };
    const block = (runs: number, m: { baseline: number[]; cp: number[]; bare: number[] }) => {
      const nodeE0 = stats(m.baseline);
      const credentialProcess = stats(m.cp);
      const bareSocketClient = stats(m.bare);
      return {
        runs, nodeE0, credentialProcess, bareSocketClient,
        ratioP50: credentialProcess.p50 / nodeE0.p50, bareRatioP50: bareSocketClient.p50 / nodeE0.p50,
        ratioP95: credentialProcess.p95 / nodeE0.p95, bareRatioP95: bareSocketClient.p95 / nodeE0.p95,
      };
    };
    const result = {
      node: process.version,
      execPath: process.execPath,
      cpus: (await import('node:os')).cpus().length,
      sequential: block(sequential, seq),
      concurrent: block(concurrent, conc),
      target: 'sequential p50 ratio <= 1.4',
    };
    if (json) {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    } else {
      const f = (s: Stats) => `p50 ${s.p50.toFixed(1).padStart(6)} ms   p95 ${s.p95.toFixed(1).padStart(6)} ms`;
      const x = (r: number) => `${r.toFixed(2)}x`;
      const lines = (title: string, b: ReturnType<typeof block>) => [
        title,
        `  node -e 0                 ${f(b.nodeE0)}`,
        `  broker credential-process ${f(b.credentialProcess)}   (${x(b.ratioP50)} p50, ${x(b.ratioP95)} p95)`,
        `  bare socket client        ${f(b.bareSocketClient)}   (${x(b.bareRatioP50)} p50, ${x(b.bareRatioP95)} p95: the floor for any daemon client)`,
      ];
      process.stdout.write([
        `node ${result.node} (${result.execPath}), ${result.cpus} CPUs`,
        ...lines(`${sequential} sequential runs`, result.sequential),
        `  target: credential-process p50 <= 1.4x node -e 0 (${x(result.sequential.ratioP50)})`,
        ...lines(`${concurrent} concurrent runs`, result.concurrent),
        '',
      ].join('\n'));
    }
  } finally {
    await machine.stop();
    await stack.stop();
  }
}

await main();
