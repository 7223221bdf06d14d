import { chmodSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { BrokerError, isBrokerError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { DaemonCore, parseRequest } from './daemon-core.js';
import { acquireInstanceLock } from './instance-lock.js';
import { daemonCall, pidPath, socketPath } from './socket.cjs';
import { MAX_REQUEST_BYTES, type DaemonResponse } from './protocol.js';
import { ensureRuntimeDir } from './runtime-dir.js';

export interface RunningDaemon {
  socket: string;
  core: DaemonCore;
  /** Resolves when the daemon has stopped (a `stop` request, SIGTERM or SIGINT). */
  stopped: Promise<void>;
  stop(): Promise<void>;
}

/**
 * `broker daemon run`: the per-user daemon in the foreground. Checks its directory, takes the
 * instance lock, reads the login from the keychain (refusing to start without a keychain), then
 * serves its Unix socket (0600, inside a 0700 directory). Returns undefined when another daemon
 * already runs (that is not an error).
 */
export async function runDaemon(options: { log?: Logger; env?: NodeJS.ProcessEnv } = {}): Promise<RunningDaemon | undefined> {
  const env = options.env ?? process.env;
  const log = options.log ?? createLogger();
  ensureRuntimeDir(env);
  const sock = socketPath(env);
  const lock = acquireInstanceLock(pidPath(env));
  if (!lock.acquired) {
    await reportRunning(sock, lock.pid);
    return undefined;
  }
  const core = new DaemonCore(log);
  let server: Server | undefined;
  try {
    // Once per start (and on `broker login`/`logout`), never per request.
    await core.loadLogin();
    try { unlinkSync(sock); } catch { /* no stale socket */ }
    server = createServer((conn) => serve(conn, core, log, () => void stop()));
    await new Promise<void>((resolve, reject) => {
      server!.once('error', reject);
      server!.listen(sock, () => resolve());
    });
    // The directory already keeps others out; the socket's own mode says so too.
    chmodSync(sock, 0o600);
  } catch (e) {
    core.close();
    lock.release();
    throw e;
  }
  log.info({ socket: sock, pid: process.pid }, 'broker daemon listening');

  let resolveStopped!: () => void;
  const stopped = new Promise<void>((r) => { resolveStopped = r; });
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= new Promise<void>((resolve) => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      core.close();
      server!.close(() => resolve());
      try { unlinkSync(sock); } catch { /* gone */ }
      lock.release();
      log.info({ pid: process.pid }, 'broker daemon stopped; credentials dropped from memory');
    }).then(resolveStopped);
    return stopping;
  };
  const onSignal = () => void stop();
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return { socket: sock, core, stopped, stop };
}

async function reportRunning(sock: string, pid: number): Promise<void> {
  try {
    await daemonCall(sock, { op: 'ping' }, 2_000);
    process.stderr.write(`broker daemon: already running (pid ${pid}, socket ${sock})\n`);
  } catch {
    throw new BrokerError('conflict', `another broker daemon (pid ${pid}) holds the lock but does not answer on ${sock}`, {
      hint: `stop it (kill ${pid}) and start again`,
    });
  }
}

/** One request per connection: a JSON line in, a JSON line out. */
function serve(conn: Socket, core: DaemonCore, log: Logger, stop: () => void): void {
  let buf = '';
  let answered = false;
  conn.setEncoding('utf8');
  const reply = (r: DaemonResponse) => {
    if (answered) return;
    answered = true;
    conn.end(`${JSON.stringify(r)}\n`);
  };
  conn.on('error', () => { /* the client went away */ });
  conn.on('data', (chunk: string) => {
    if (answered) return;
    buf += chunk;
    if (Buffer.byteLength(buf) > MAX_REQUEST_BYTES) {
      reply(failure(new BrokerError('invalid_request', `request to the broker daemon larger than ${MAX_REQUEST_BYTES} bytes`)));
      return;
    }
    const nl = buf.indexOf('\n');
    if (nl < 0) return;
    const line = buf.slice(0, nl);
    void (async () => {
      let op = 'unknown';
      try {
        let raw: unknown;
        try {
          raw = JSON.parse(line);
        } catch {
          throw new BrokerError('invalid_request', 'request to the broker daemon is not JSON');
        }
        const req = parseRequest(raw);
        op = req.op;
        const result = await core.handle(req);
        reply({ ok: true, result });
        if (req.op === 'stop') stop();
      } catch (e) {
        if (!isBrokerError(e) || e.status >= 500) log.warn({ op, code: isBrokerError(e) ? e.code : 'internal', err: (e as Error)?.message }, 'request failed');
        reply(failure(e));
      }
    })();
  });
}

function failure(e: unknown): DaemonResponse {
  if (isBrokerError(e)) {
    return { ok: false, error: { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}), ...(e.details ? { details: e.details } : {}) } };
  }
  // Unknown errors may carry anything in their text: a fixed message, the detail stays in the log.
  return { ok: false, error: { code: 'internal', message: 'internal error in the broker daemon', hint: 'see its log: broker daemon status' } };
}
