import { chmodSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { BrokerError, isBrokerError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { DaemonCore, statusCheckMsFrom } from './daemon-core.js';
import { breakStaleLock, LOCK_WAIT_MS, pidExists, STALE_LOCK_MS, tryInstanceLock, type InstanceLock, type LockHolder } from './instance-lock.js';
import { daemonCall, isNoDaemon, logPath, pidPath, socketPath } from './socket.cjs';
import { MAX_REQUEST_BYTES, parseRequest, pingResult, type DaemonRequest, type DaemonResponse } from './protocol.js';
import { ensureRuntimeDir } from './runtime-dir.js';

/** How long one probe waits for a ping answer. */
const PROBE_MS = 1_000;
/** Re-checks that this daemon still holds its lock (see runDaemon). */
const LOCK_CHECK_MS = 15_000;

export interface RunningDaemon {
  socket: string;
  core: DaemonCore;
  /** Resolves when the daemon has stopped (a `stop` request, SIGTERM or SIGINT). */
  stopped: Promise<void>;
  stop(): Promise<void>;
}

/**
 * `broker daemon run`: the per-user daemon in the foreground. Checks its directory, takes the
 * instance lock, listens on its Unix socket (0600, inside a 0700 directory), and reads the login
 * from the keychain (refusing to start without a keychain). Requests that arrive before the login is
 * read wait for it. Returns undefined when another daemon already runs (that is not an error).
 */
export async function runDaemon(options: { log?: Logger; env?: NodeJS.ProcessEnv } = {}): Promise<RunningDaemon | undefined> {
  const env = options.env ?? process.env;
  const log = options.log ?? createLogger();
  ensureRuntimeDir(env);
  const sock = socketPath(env);
  const lock = await takeInstanceLock(env);
  if (!lock) return undefined;
  const core = new DaemonCore(log, { statusCheckMs: statusCheckMsFrom(env, log), runtimeDir: dirname(sock) });
  const failures = new FailureLog(log);
  // Listening comes before the keychain: a second starter then finds someone at the socket within
  // milliseconds of the lock being taken, however long the keychain takes (a desktop keychain may
  // ask the user to unlock it). Requests wait for `ready`. Once per start (and on `broker
  // login`/`logout`), never per request.
  const ready = core.loadLogin();
  ready.catch(() => { /* reported below, and to every request that waited */ });
  let server: Server | undefined;
  try {
    try { unlinkSync(sock); } catch { /* no stale socket */ }
    server = createServer((conn) => serve(conn, core, ready, failures, () => void stop()));
    await new Promise<void>((resolve, reject) => {
      server!.once('error', reject);
      server!.listen(sock, () => resolve());
    });
    // The directory already keeps others out; the socket's own mode says so too.
    chmodSync(sock, 0o600);
    await ready;
  } catch (e) {
    core.close();
    if (server) await closeServer(server);
    try { unlinkSync(sock); } catch { /* gone */ }
    lock.release();
    throw e;
  }
  log.info({ socket: sock, pid: process.pid }, 'broker daemon listening');

  let resolveStopped!: () => void;
  const stopped = new Promise<void>((r) => { resolveStopped = r; });
  let stopping: Promise<void> | undefined;
  // Someone removed this daemon's socket and another daemon judged its lock stale and took it over:
  // nobody can reach this one any more, so it drops what it holds and goes.
  const lockCheck = setInterval(() => {
    if (lock.owns()) return;
    log.warn({ pid: process.pid, socket: sock }, 'another broker daemon took over the instance lock; stopping');
    void stop();
  }, LOCK_CHECK_MS);
  lockCheck.unref();
  const stop = (): Promise<void> => {
    stopping ??= new Promise<void>((resolve) => {
      clearInterval(lockCheck);
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

/**
 * The instance lock, or undefined when another daemon answers on the socket. A starter that finds
 * the lock taken waits (bounded by LOCK_WAIT_MS) for its holder to answer: the holder may have taken
 * it a moment ago (many commands start the daemon at once). A lock whose holder nobody hears — no
 * listener on the socket, and the holder is dead or has held it for STALE_LOCK_MS — is taken over.
 */
async function takeInstanceLock(env: NodeJS.ProcessEnv): Promise<InstanceLock | undefined> {
  const file = pidPath(env);
  const sock = socketPath(env);
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    const attempt = lockFile(file, () => tryInstanceLock(file));
    if (attempt.acquired) return attempt.lock;
    const holder = attempt.holder;
    if (!holder) continue; // released between our open and our read: try again at once
    const probe = await probeSocket(sock);
    if (probe.kind === 'answers') {
      process.stderr.write(`broker daemon: already running (pid ${probe.pid}, socket ${sock})\n`);
      return undefined;
    }
    if (probe.kind === 'none' && isStale(holder) && lockFile(file, () => breakStaleLock(file, holder))) continue;
    if (Date.now() > deadline) throw notAnswering(holder, probe.kind, sock, env);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The lock file's own failures (not ours to read or create): said plainly, with the fix. */
function lockFile<T>(file: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new BrokerError('invalid_config', `cannot use the daemon's lock file ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, {
      cause: e, hint: `it must be yours (mode 0600); if no broker daemon runs, remove it: rm ${file}`,
    });
  }
}

function isStale(h: LockHolder): boolean {
  if (h.ageMs > STALE_LOCK_MS) return true;
  return h.pid !== undefined && !pidExists(h.pid);
}

type Probe = { kind: 'answers'; pid: number } | { kind: 'none' } | { kind: 'silent' } | { kind: 'failing' };

/** Who is at the socket: a daemon that answers, one that failed to start, one that is silent, or nobody. */
async function probeSocket(sock: string): Promise<Probe> {
  try {
    const r = await daemonCall(sock, { op: 'ping' }, PROBE_MS);
    // Only the pid is used: any daemon that answers `ok` is one, whatever else its version reports.
    const ping = r.ok ? pingResult.pick({ pid: true }).safeParse(r.result) : undefined;
    return ping?.success ? { kind: 'answers', pid: ping.data.pid } : { kind: 'failing' };
  } catch (e) {
    return isNoDaemon(e) ? { kind: 'none' } : { kind: 'silent' };
  }
}

function notAnswering(h: LockHolder, probe: Probe['kind'], sock: string, env: NodeJS.ProcessEnv): BrokerError {
  const who = h.pid ? `another broker daemon (pid ${h.pid})` : 'another broker daemon';
  if (probe === 'silent') {
    return new BrokerError('conflict', `${who} is listening on ${sock} but has not answered for ${LOCK_WAIT_MS / 1000}s`, {
      hint: `it may be waiting for the OS keychain to be unlocked; see its log: ${logPath(env)}`,
    });
  }
  return new BrokerError('conflict', `${who} is starting but has not answered on ${sock} within ${LOCK_WAIT_MS / 1000}s`, {
    hint: `see its log: ${logPath(env)}`,
  });
}

function closeServer(server: Server): Promise<void> {
  // Connections that waited for the login have their answer (the start-up error) on its way; a client
  // that never sends its line must not hold the exit up.
  return Promise.race([
    new Promise<void>((r) => server.close(() => r())),
    new Promise<void>((r) => setTimeout(r, 2_000).unref()),
  ]);
}

/**
 * Failed requests are logged once per change of state (per operation and task), not once per call:
 * during an outage every credential_process call fails the same way, and the credential cache logs
 * the outage itself.
 */
class FailureLog {
  private readonly failing = new Map<string, string>();
  constructor(private readonly log: Logger) {}

  failed(req: DaemonRequest | undefined, e: unknown): void {
    if (isBrokerError(e) && e.status < 500) return;
    const key = stateKey(req);
    const code = isBrokerError(e) ? e.code : 'internal';
    if (this.failing.get(key) === code) return;
    this.failing.set(key, code);
    this.log.warn({ op: req?.op ?? 'unknown', ...taskOf(req), code, err: (e as Error)?.message }, 'request failed');
  }

  succeeded(req: DaemonRequest): void {
    if (this.failing.delete(stateKey(req))) this.log.info({ op: req.op, ...taskOf(req) }, 'requests succeed again');
  }
}

const taskOf = (req: DaemonRequest | undefined): { task?: string } =>
  req && (req.op === 'credentials' || req.op === 'vault-token') && req.task ? { task: req.task } : {};
const stateKey = (req: DaemonRequest | undefined): string => `${req?.op ?? 'unknown'}:${taskOf(req).task ?? ''}`;

/**
 * One request per connection: a JSON line in, a JSON line out. The exception is `exec-endpoint`:
 * its answer leaves the connection open, and its token lives exactly as long as the connection —
 * the `broker exec` that asked holds it until it ends, and the kernel closes it if the exec is
 * killed, so the token dies with the exec however it ends.
 */
function serve(conn: Socket, core: DaemonCore, ready: Promise<void>, failures: FailureLog, stop: () => void): void {
  let buf = '';
  let answered = false;
  let closed = false;
  conn.setEncoding('utf8');
  const reply = (r: DaemonResponse, keepOpen = false) => {
    if (answered) return;
    answered = true;
    const line = `${JSON.stringify(r)}\n`;
    if (keepOpen) conn.write(line);
    else conn.end(line);
  };
  conn.on('error', () => { /* the client went away */ });
  conn.on('close', () => { closed = true; });
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
      let req: DaemonRequest | undefined;
      try {
        let raw: unknown;
        try {
          raw = JSON.parse(line);
        } catch {
          throw new BrokerError('invalid_request', 'request to the broker daemon is not JSON');
        }
        req = parseRequest(raw);
        await ready.catch((e: unknown) => { throw couldNotStart(e); });
        if (req.op === 'exec-endpoint') {
          const reg = await core.execEndpoint(req.task, req.session, () => conn.destroy());
          // Gone while the token was made: it was never handed out.
          if (closed) { reg.release(); return; }
          conn.on('close', () => reg.release());
          reply({ ok: true, result: { url: reg.url, tokenFile: reg.tokenFile } }, true);
          failures.succeeded(req);
          return;
        }
        const result = await core.handle(req);
        reply({ ok: true, result });
        failures.succeeded(req);
        if (req.op === 'stop') stop();
      } catch (e) {
        failures.failed(req, e);
        reply(failure(e));
      }
    })();
  });
}

/** The start-up failure (no keychain, …) as the answer to the requests that waited for it. */
function couldNotStart(e: unknown): BrokerError {
  if (!isBrokerError(e)) return new BrokerError('internal', 'the broker daemon could not start', { cause: e, hint: 'see its log: broker daemon status' });
  return new BrokerError(e.code, `the broker daemon could not start: ${e.message}`, { cause: e, ...(e.hint ? { hint: e.hint } : {}), ...(e.details ? { details: e.details } : {}) });
}

function failure(e: unknown): DaemonResponse {
  if (isBrokerError(e)) {
    return { ok: false, error: { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}), ...(e.details ? { details: e.details } : {}) } };
  }
  // Unknown errors may carry anything in their text: a fixed message, the detail stays in the log.
  return { ok: false, error: { code: 'internal', message: 'internal error in the broker daemon', hint: 'see its log: broker daemon status' } };
}
