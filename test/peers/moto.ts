import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { CreateRoleCommand, IAMClient } from '@aws-sdk/client-iam';
import { VENV_BIN } from './paths.js';

export interface Moto {
  /** e.g. http://127.0.0.1:41234 — pass as the SDK's `endpoint` or AWS_ENDPOINT_URL. */
  url: string;
  port: number;
  stop(): Promise<void>;
  /** moto's whole recorded state (`GET /moto-api/data.json`): roles, AssumeRole sessions, … */
  data(): Promise<any>;
}

const MOTO_SERVER = process.env.MOTO_SERVER ?? join(VENV_BIN, 'moto_server');
const START_TIMEOUT_MS = 30_000;

/** Children still running; killed if this process exits without stopping them. */
const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

/**
 * Starts a real moto server (STS, IAM, …) on 127.0.0.1. It is given port 0 and the port the OS chose
 * is read from its "Running on" line, so there is no window between picking a free port and binding.
 * On Linux it runs under `setpriv --pdeathsig KILL`, so even a test process killed by a signal
 * (where no 'exit' handler runs) takes moto with it.
 */
export async function startMoto(opts: { env?: Record<string, string> } = {}): Promise<Moto> {
  const args = ['-H', '127.0.0.1', '-p', '0'];
  const env = { ...process.env, ...opts.env };
  const usePdeath = process.platform === 'linux' && existsSync('/usr/bin/setpriv');
  const child = usePdeath
    ? spawn('/usr/bin/setpriv', ['--pdeathsig', 'KILL', '--', MOTO_SERVER, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env })
    : spawn(MOTO_SERVER, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  running.add(child);
  const exited = new Promise<void>((resolve) => child.once('exit', () => { running.delete(child); resolve(); }));

  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  };

  let output = '';
  try {
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`moto_server did not start within ${START_TIMEOUT_MS} ms:\n${output}`)), START_TIMEOUT_MS);
      const onData = (chunk: Buffer) => {
        output += chunk.toString();
        const m = /Running on http:\/\/127\.0\.0\.1:(\d+)/.exec(output);
        if (m) { clearTimeout(timer); resolve(Number(m[1])); }
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      child.once('error', (e) => { clearTimeout(timer); reject(new Error(`cannot run ${MOTO_SERVER} (run scripts/setup.sh): ${e.message}`)); });
      child.once('exit', (code, signal) => { clearTimeout(timer); reject(new Error(`moto_server exited (${code ?? signal}) before it started:\n${output}`)); });
    });
    // Keep draining its request log so a full pipe never blocks the server.
    child.stdout!.resume();
    child.stderr!.resume();
    const url = `http://127.0.0.1:${port}`;
    await waitUntilAnswering(`${url}/moto-api/`);
    return {
      url,
      port,
      stop,
      async data() {
        const res = await fetch(`${url}/moto-api/data.json`);
        if (!res.ok) throw new Error(`moto data.json: HTTP ${res.status}`);
        return res.json();
      },
    };
  } catch (e) {
    await stop();
    throw e;
  }
}

async function waitUntilAnswering(url: string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`moto at ${url} did not answer within ${START_TIMEOUT_MS} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Environment for SDK and CLI clients (AWS CLI, boto3, a spawned broker) pointed at moto: dummy
 * keys, a fixed region, no instance metadata lookups, and no shared config/credentials from $HOME.
 */
export function awsTestEnv(url: string): Record<string, string> {
  return {
    AWS_ACCESS_KEY_ID: 'testing',
    AWS_SECRET_ACCESS_KEY: 'testing',
    AWS_REGION: 'us-east-1',
    AWS_DEFAULT_REGION: 'us-east-1',
    AWS_ENDPOINT_URL: url,
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONFIG_FILE: '/dev/null',
    AWS_SHARED_CREDENTIALS_FILE: '/dev/null',
  };
}

/** An IAM client for moto with the test keys (independent of this process's environment). */
export function motoIamClient(url: string): IAMClient {
  return new IAMClient({ region: 'us-east-1', endpoint: url, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });
}

/** Creates a role in moto and returns its ARN. */
export async function createRole(url: string, name: string, trustPolicy: object | string, maxSessionDuration?: number): Promise<string> {
  const iam = motoIamClient(url);
  try {
    const out = await iam.send(new CreateRoleCommand({
      RoleName: name,
      AssumeRolePolicyDocument: typeof trustPolicy === 'string' ? trustPolicy : JSON.stringify(trustPolicy),
      ...(maxSessionDuration === undefined ? {} : { MaxSessionDuration: maxSessionDuration }),
    }));
    return out.Role!.Arn!;
  } finally {
    iam.destroy();
  }
}
