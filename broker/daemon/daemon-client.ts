import { BrokerError } from '../errors.js';
import { daemonCall, DIR_REFUSED, isNoDaemon, socketPath } from './socket.cjs';
import type { DaemonRequest } from './protocol.js';

/** Bounded: Go SDK v2 kills credential_process after a minute, and people should not wait longer. */
export const DAEMON_TIMEOUT_MS = 50_000;

/**
 * A request to the per-user daemon from the CLI, starting the daemon first when none is running
 * (`autostart: false` for commands that only inform a running one). Daemon-side failures come back
 * as the same BrokerError.
 */
export async function callDaemon<T>(request: DaemonRequest, opts: { autostart?: boolean; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<T> {
  const env = opts.env ?? process.env;
  const sock = socketPath(env);
  const timeout = opts.timeoutMs ?? DAEMON_TIMEOUT_MS;
  // One budget for starting the daemon and asking it, so a first call also stays under the bound.
  const deadline = Date.now() + timeout;
  let response;
  try {
    response = await daemonCall<T>(sock, request, timeout);
  } catch (e) {
    if (!isNoDaemon(e)) throw unreachable(e, sock);
    if (opts.autostart === false) throw new BrokerError('upstream_unavailable', 'the broker daemon is not running', { hint: 'start it: broker daemon start' });
    const { startDaemonInBackground } = await import('./autostart.js');
    await startDaemonInBackground(env);
    try {
      response = await daemonCall<T>(sock, request, Math.max(1_000, deadline - Date.now()));
    } catch (e2) {
      throw unreachable(e2, sock);
    }
  }
  if (!response.ok) {
    const { code, message, hint, details } = response.error;
    throw new BrokerError(code, message, { ...(hint ? { hint } : {}), ...(details ? { details } : {}) });
  }
  return response.result;
}

/** Like callDaemon, but only if a daemon is running: undefined (and nothing started) otherwise. */
export async function callRunningDaemon<T>(request: DaemonRequest, opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<{ result: T } | undefined> {
  const sock = socketPath(opts.env ?? process.env);
  let response;
  try {
    response = await daemonCall<T>(sock, request, opts.timeoutMs ?? DAEMON_TIMEOUT_MS);
  } catch (e) {
    if (isNoDaemon(e)) return undefined;
    throw unreachable(e, sock);
  }
  if (!response.ok) {
    const { code, message, hint, details } = response.error;
    throw new BrokerError(code, message, { ...(hint ? { hint } : {}), ...(details ? { details } : {}) });
  }
  return { result: response.result };
}

function unreachable(e: unknown, sock: string): BrokerError {
  // The directory failed the check (socket.cts): nothing was sent, and no daemon is started there.
  const err = e as Error & { code?: string; hint?: string };
  if (err.code === DIR_REFUSED) return new BrokerError('invalid_config', err.message, { ...(err.hint ? { hint: err.hint } : {}) });
  return new BrokerError('upstream_unavailable', `cannot talk to the broker daemon at ${sock}: ${(e as Error).message}`, {
    hint: 'restart it: broker daemon stop; broker daemon start',
  });
}
