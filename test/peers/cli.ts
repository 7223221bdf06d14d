import { spawn, type SpawnOptions } from 'node:child_process';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BROKER_BIN } from './paths.js';

export interface RunResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

/** Runs a command to completion, with a hard time limit so a hung peer fails the test, not CI. */
export function run(cmd: string, args: string[], opts: SpawnOptions & { input?: string; timeoutMs?: number; onStderr?: (chunk: string) => void } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); opts.onStderr?.(c.toString()); });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`${cmd} ${args.join(' ')} timed out\n${stderr}`)); }, opts.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }); });
    // A child that never reads its stdin (credential-process) may have exited before the end of its
    // stdin is written, on a loaded machine: EPIPE then, which is no failure of the child.
    child.stdin!.on('error', () => {});
    child.stdin!.end(opts.input ?? '');
  });
}

/** `broker …` with the given environment (a test HOME, BROKER_URL, …) on top of this process's. */
export function broker(args: string[], env: Record<string, string>, opts: { input?: string; onStderr?: (chunk: string) => void; timeoutMs?: number } = {}): Promise<RunResult> {
  return run(process.execPath, [BROKER_BIN, ...args], { env: { ...process.env, ...env }, ...opts });
}

/**
 * A throwaway developer machine: its own HOME, AWS config, XDG dirs (so its own daemon socket) and
 * none of this process's AWS or broker settings. `stop()` stops the daemon commands may have started.
 */
export interface TestHome {
  home: string;
  env: Record<string, string>;
  runtimeDir: string;
  stop(): Promise<void>;
}

export function makeTestHome(prefix = 'broker-home-'): TestHome {
  const home = mkdtempSync(join(tmpdir(), prefix));
  mkdirSync(join(home, '.aws'), { mode: 0o700 });
  const runtimeDir = join(home, 'run');
  const env: Record<string, string> = {
    HOME: home, XDG_CONFIG_HOME: join(home, '.config'), XDG_RUNTIME_DIR: runtimeDir, CI: '',
    AWS_CONFIG_FILE: join(home, '.aws', 'config'), AWS_SHARED_CREDENTIALS_FILE: join(home, '.aws', 'credentials'),
    AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '', AWS_SESSION_TOKEN: '', AWS_PROFILE: '', AWS_REGION: '',
    AWS_DEFAULT_REGION: '', AWS_EC2_METADATA_DISABLED: 'true', BROKER_URL: '',
  };
  return {
    home, env, runtimeDir,
    stop: async () => { await broker(['daemon', 'stop'], env); },
  };
}

/**
 * Logs in through the device flow (`--device`, or `args` in its place), approving the printed code
 * at the test IdP as `email`.
 */
export async function deviceLogin(serverUrl: string, env: Record<string, string>, idp: { approveDevice(code: string, email: string): Promise<void> }, email: string, args = ['--device']): Promise<RunResult> {
  let approval: Promise<void> | undefined;
  const r = await broker(['login', '--server', serverUrl, ...args], env, {
    onStderr: (chunk) => {
      const m = /code: ([A-Z0-9-]+)/.exec(chunk);
      if (m && !approval) approval = idp.approveDevice(m[1]!, email);
    },
  });
  await approval;
  return r;
}
