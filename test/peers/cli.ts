import { spawn, type SpawnOptions } from 'node:child_process';
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
    child.stdin!.end(opts.input ?? '');
  });
}

/** `broker …` with the given environment (a test HOME, BROKER_URL, …) on top of this process's. */
export function broker(args: string[], env: Record<string, string>, opts: { input?: string; onStderr?: (chunk: string) => void; timeoutMs?: number } = {}): Promise<RunResult> {
  return run(process.execPath, [BROKER_BIN, ...args], { env: { ...process.env, ...env }, ...opts });
}
