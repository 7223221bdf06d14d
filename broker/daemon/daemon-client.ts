import { connect, type Socket } from 'node:net';
import { dirname } from 'node:path';
import type { z } from 'zod';
import { BrokerError, isErrorCode } from '../errors.js';
import { firstIssue } from '../wire/json-pointer.js';
import { daemonCall, DIR_REFUSED, isNoDaemon, runtimeDirProblem, socketPath } from './socket.cjs';
import { daemonResponse, resultSchemas, type DaemonOp, type DaemonRequest, type DaemonResult } from './protocol.js';

/** Bounded: Go SDK v2 kills credential_process after a minute, and people should not wait longer. */
export const DAEMON_TIMEOUT_MS = 50_000;

/**
 * A request to the per-user daemon from the CLI, starting the daemon first when none is running
 * (`autostart: false` for commands that only inform a running one). The answer is checked against
 * the op's result schema (protocol.ts); daemon-side failures come back as the same BrokerError.
 */
export async function callDaemon<R extends DaemonRequest>(request: R, opts: { autostart?: boolean; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<DaemonResult<R['op']>> {
  const env = opts.env ?? process.env;
  const sock = socketPath(env);
  const timeout = opts.timeoutMs ?? DAEMON_TIMEOUT_MS;
  // One budget for starting the daemon and asking it, so a first call also stays under the bound.
  const deadline = Date.now() + timeout;
  let response: unknown;
  try {
    response = await daemonCall(sock, request, timeout);
  } catch (e) {
    if (!isNoDaemon(e)) throw unreachable(e, sock);
    if (opts.autostart === false) throw new BrokerError('upstream_unavailable', 'the broker daemon is not running', { hint: 'start it: broker daemon start' });
    const { startDaemonInBackground } = await import('./autostart.js');
    await startDaemonInBackground(env);
    try {
      response = await daemonCall(sock, request, Math.max(1_000, deadline - Date.now()));
    } catch (e2) {
      throw unreachable(e2, sock);
    }
  }
  return resultOf(request, response);
}

/** Like callDaemon, but only if a daemon is running: undefined (and nothing started) otherwise. */
export async function callRunningDaemon<R extends DaemonRequest>(request: R, opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<{ result: DaemonResult<R['op']> } | undefined> {
  const sock = socketPath(opts.env ?? process.env);
  let response: unknown;
  try {
    response = await daemonCall(sock, request, opts.timeoutMs ?? DAEMON_TIMEOUT_MS);
  } catch (e) {
    if (isNoDaemon(e)) return undefined;
    throw unreachable(e, sock);
  }
  return { result: resultOf(request, response) };
}

/** A connection to the daemon kept open after its answer (`exec-endpoint`): what it grants lives as long as it does. */
export interface HeldConnection {
  /** Called once if the daemon closes it first (it stopped): what it granted is gone. */
  onLost(listener: () => void): void;
  /** Closes it: the daemon revokes what it granted. */
  close(): void;
}

/**
 * A request whose answer stays valid only while its connection is open (`exec-endpoint`), to a
 * daemon already running (exec asked it to start the session). The connection does not keep this
 * process alive; the kernel closes it when the process ends, however it ends.
 */
export function holdDaemonCall<R extends DaemonRequest>(request: R, opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<{ result: DaemonResult<R['op']>; connection: HeldConnection }> {
  const sock = socketPath(opts.env ?? process.env);
  return new Promise((resolve, reject) => {
    let problem;
    try {
      problem = runtimeDirProblem(dirname(sock));
    } catch (e) {
      reject(unreachable(e, sock));
      return;
    }
    if (problem) {
      reject(new BrokerError('invalid_config', `refusing to connect to the broker daemon: ${problem.problem}`, { hint: problem.hint }));
      return;
    }
    const s: Socket = connect(sock);
    let buf = '';
    let answered = false;
    let closing = false;
    const lost: (() => void)[] = [];
    const timer = setTimeout(() => { s.destroy(); reject(unreachable(new Error('no answer in time'), sock)); }, opts.timeoutMs ?? DAEMON_TIMEOUT_MS);
    s.setEncoding('utf8');
    s.on('connect', () => s.write(`${JSON.stringify(request)}\n`));
    s.on('error', (e) => { if (!answered) { clearTimeout(timer); reject(unreachable(e, sock)); } });
    s.on('close', () => {
      if (!answered) { clearTimeout(timer); reject(unreachable(new Error('closed without answering'), sock)); return; }
      if (!closing) for (const l of lost) l();
    });
    s.on('data', (chunk: string) => {
      if (answered) return;
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      answered = true;
      clearTimeout(timer);
      let result: DaemonResult<R['op']>;
      try {
        result = resultOf(request, JSON.parse(buf.slice(0, nl)));
      } catch (e) {
        s.destroy();
        reject(e instanceof BrokerError ? e : unreachable(e, sock));
        return;
      }
      s.unref();
      resolve({
        result,
        connection: {
          onLost: (l) => { lost.push(l); },
          close: () => { closing = true; s.destroy(); },
        },
      });
    });
  });
}

/** The answer to `request`, checked: its result by the op's schema, or its error as a BrokerError. */
export function resultOf<R extends DaemonRequest>(request: R, response: unknown): DaemonResult<R['op']> {
  const envelope = daemonResponse.safeParse(response);
  if (!envelope.success) throw unexpectedAnswer(request.op, envelope.error);
  if (!envelope.data.ok) {
    const { code, message, hint, details } = envelope.data.error;
    // A code this CLI does not know (a newer daemon): internal, with the daemon's message.
    throw new BrokerError(isErrorCode(code) ? code : 'internal', message, { ...(hint ? { hint } : {}), ...(details ? { details } : {}) });
  }
  const parsed = resultSchema<R['op']>(request.op).safeParse(envelope.data.result);
  if (!parsed.success) throw unexpectedAnswer(request.op, parsed.error);
  return parsed.data;
}

/**
 * The op's result schema, typed by its op. DaemonResult<Op> is by definition the output of
 * `resultSchemas[Op]`; TypeScript cannot follow that through a generic index, so the lookup states
 * it. The data is still checked by exactly that schema.
 */
function resultSchema<Op extends DaemonOp>(op: Op): z.ZodType<DaemonResult<Op>> {
  return resultSchemas[op] as unknown as z.ZodType<DaemonResult<Op>>;
}

/** Where the answer differs from the protocol and how; never what it holds (it may hold credentials). */
function unexpectedAnswer(op: string, error: z.ZodError): BrokerError {
  return new BrokerError('upstream_error', `the broker daemon sent an unexpected answer to ${op} (${firstIssue(error)})`, {
    hint: 'the broker CLI and daemon may be different versions: broker daemon stop, then retry',
  });
}

function unreachable(e: unknown, sock: string): BrokerError {
  // The directory failed the check (socket.cts): nothing was sent, and no daemon is started there.
  const err = e as Error & { code?: string; hint?: string };
  if (err.code === DIR_REFUSED) return new BrokerError('invalid_config', err.message, { ...(err.hint ? { hint: err.hint } : {}) });
  return new BrokerError('upstream_unavailable', `cannot talk to the broker daemon at ${sock}: ${(e as Error).message}`, {
    hint: 'restart it: broker daemon stop; broker daemon start',
  });
}
