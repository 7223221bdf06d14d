import { spawn } from 'node:child_process';
import { closeSync, openSync, readSync, renameSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BrokerError } from '../errors.js';
import { errorCodeForExit } from '../exit-codes.cjs';
import { NO_CORE_SH } from '../clean-start.js';
import { DAEMON_CLEAN_MARK, daemonEnvironment } from './daemon-env.js';
import { LOCK_WAIT_MS } from './instance-lock.js';
import { daemonCall, logPath, socketPath } from './socket.cjs';
import { ensureRuntimeDir } from './runtime-dir.js';

const BROKER_BIN = fileURLToPath(new URL('../../../bin/broker.cjs', import.meta.url));
/**
 * A started daemon that finds another one starting waits up to LOCK_WAIT_MS for it (daemon.ts) and
 * then reports; this waits a little longer, so that report, not a bare timeout, is what people see.
 */
const START_TIMEOUT_MS = LOCK_WAIT_MS + 5_000;
/** The log is kept short: one previous generation, rotated at start. */
const MAX_LOG_BYTES = 5 * 1024 * 1024;

/**
 * Starts `broker daemon run` in the background (detached, its output in the daemon log) and waits
 * until it answers. If it exits instead, its own error message becomes this one's.
 */
export async function startDaemonInBackground(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  ensureRuntimeDir(env);
  const log = logPath(env);
  let offset = 0;
  try {
    offset = statSync(log).size;
    if (offset > MAX_LOG_BYTES) {
      renameSync(log, `${log}.1`);
      offset = 0;
    }
  } catch { /* no log yet */ }
  const fd = openSync(log, 'a', 0o600);
  let exitCode: number | null = null;
  try {
    // Started clean (clean-start.ts), so it need not re-execute itself: through `sh -c 'ulimit -c 0;
    // exec …'` (it holds credentials in memory and must not dump core) and with the allowlisted
    // environment, not the caller's (daemon-env.ts: no standing key of the caller's shell or agent
    // in /proc/<daemon>/environ). The mark tells it so; it checks both itself.
    const child = spawn('/bin/sh', ['-c', NO_CORE_SH, 'sh', process.execPath, BROKER_BIN, 'daemon', 'run'], {
      detached: true, stdio: ['ignore', 'ignore', fd], env: { ...daemonEnvironment(env), [DAEMON_CLEAN_MARK]: '1' },
    });
    child.once('exit', (code, signal) => { exitCode = code ?? (signal ? 1 : 0); });
    child.once('error', () => { exitCode = 127; });
    child.unref();
  } finally {
    closeSync(fd);
  }
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    let answer;
    try {
      answer = await daemonCall(socketPath(env), { op: 'ping' }, 1_000);
    } catch { /* not up yet */ }
    if (answer?.ok) return;
    // It answered that it could not start (no keychain, …): that is the error to show.
    if (answer) {
      const { code, message, hint, details } = answer.error;
      throw new BrokerError(code, message, { ...(hint ? { hint } : {}), ...(details ? { details } : {}) });
    }
    // Exit 0 means another daemon won the race: keep knocking.
    if (exitCode !== null && exitCode !== 0) throw startFailure(log, offset, exitCode);
    if (Date.now() > deadline) {
      throw new BrokerError('upstream_unavailable', `the broker daemon did not start within ${START_TIMEOUT_MS / 1000}s`, { hint: `see its log: ${log}` });
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * The daemon reports a failed start as `broker: message` lines on stderr, which went to the log,
 * and exits with the status of the error's code (README "Exit codes"): the code is taken back from it.
 */
function startFailure(log: string, offset: number, status: number): BrokerError {
  let text = '';
  try {
    const fd = openSync(log, 'r');
    const buf = Buffer.alloc(Math.min(64 * 1024, Math.max(0, statSync(log).size - offset)));
    readSync(fd, buf, 0, buf.length, offset);
    closeSync(fd);
    text = buf.toString('utf8');
  } catch { /* fall through */ }
  const lines = text.split('\n');
  const at = lines.findIndex((l) => l.startsWith('broker: '));
  if (at < 0) return new BrokerError('internal', 'the broker daemon failed to start', { hint: `see its log: ${log}` });
  const message = lines[at]!.slice('broker: '.length);
  // Then, as cli/output.ts writes them: one indented line per detail (file:field: problem), the hint.
  const indented = [];
  for (const l of lines.slice(at + 1)) {
    if (!l.startsWith('  ')) break;
    indented.push(l.trim());
  }
  const hint = indented.find((l) => l.startsWith('hint: '))?.slice('hint: '.length);
  const details = indented.filter((l) => !l.startsWith('hint: ')).map((l) => ({ message: l }));
  return new BrokerError(errorCodeForExit(status) ?? 'internal', `the broker daemon could not start: ${message}`, { ...(hint ? { hint } : {}), ...(details.length ? { details } : {}) });
}
