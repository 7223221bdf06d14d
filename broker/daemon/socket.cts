import { lstatSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import type { DaemonRequest, DaemonResponse } from './protocol.js';

/**
 * Where the per-user daemon's socket is, and one request to it. This is the whole of the
 * credential_process fast path besides its command module: CommonJS (no ESM linking), one file,
 * nothing but Node builtins that a Node process has loaded anyway (node:net, node:path, node:fs;
 * node:os only without $HOME). bench/credential-process measures it.
 *
 * `$XDG_RUNTIME_DIR/agent-credential-broker` (a per-user tmpfs that the login manager creates 0700,
 * XDG Base Directory spec), else (and always on macOS) `~/.agent-credential-broker/run`. Either way the directory is ours
 * alone (0700), and the daemon refuses to start otherwise.
 */
export const APP_DIR_NAME = 'agent-credential-broker';

/** Whether the daemon's directory is under $XDG_RUNTIME_DIR (else the fallback under $HOME). */
export function usesXdgRuntimeDir(env: NodeJS.ProcessEnv = process.env, platform: NodeJS.Platform = process.platform): boolean {
  // The spec says a relative value must be ignored. macOS has no XDG runtime directory: a value set
  // in a shell is not seen by apps started from the Dock or by launchd, which would then look for
  // (and start) a second daemon elsewhere, so there it is ignored and everyone uses the fallback.
  return platform !== 'darwin' && env.XDG_RUNTIME_DIR?.startsWith('/') === true;
}

export function runtimeDir(env: NodeJS.ProcessEnv = process.env, platform: NodeJS.Platform = process.platform): string {
  if (usesXdgRuntimeDir(env, platform)) return join(env.XDG_RUNTIME_DIR!, APP_DIR_NAME);
  return join(env.HOME || (require('node:os') as typeof import('node:os')).homedir(), `.${APP_DIR_NAME}`, 'run');
}

export const socketPath = (env: NodeJS.ProcessEnv = process.env): string => join(runtimeDir(env), 'daemon.sock');
export const pidPath = (env: NodeJS.ProcessEnv = process.env): string => join(runtimeDir(env), 'daemon.pid');
export const logPath = (env: NodeJS.ProcessEnv = process.env, platform: NodeJS.Platform = process.platform): string => join(runtimeDir(env, platform), 'daemon.log');

/** sun_path holds 108 bytes on Linux and 104 on macOS, each with a terminating NUL (unix(7)). */
export const MAX_SOCKET_PATH_BYTES = process.platform === 'linux' ? 107 : 103;

/** What is wrong with the daemon's directory, and how to fix it. */
export interface RuntimeDirProblem { problem: string; hint: string }

/**
 * The rule for the daemon's directory, one for the daemon (runtime-dir.ts, at start) and for every
 * client (daemonCall, before connecting): a real directory (lstat: not a symlink), owned by this
 * user, closed to group and others. The socket inside is the door to the developer's credentials;
 * a directory someone else could enter or swap could hold a socket that is not our daemon, which
 * would be handed requests (a `broker exec` asks it for a Vault token) and could answer anything.
 * Throws what lstat throws (ENOENT: no directory yet, so no daemon either).
 */
export function runtimeDirProblem(dir: string): RuntimeDirProblem | undefined {
  const st = lstatSync(dir);
  if (!st.isDirectory()) {
    return {
      problem: `${dir} is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a directory'}`,
      hint: `remove it (rm ${dir}); the daemon creates its directory itself, mode 0700`,
    };
  }
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    return {
      problem: `${dir} belongs to uid ${st.uid}, not to you (uid ${uid})`,
      hint: `someone else controls where your credentials would be served; remove ${dir} (as its owner) and start again`,
    };
  }
  const mode = st.mode & 0o777;
  if (mode & 0o077) return { problem: `${dir} is open to group or others (mode ${mode.toString(8).padStart(4, '0')})`, hint: `make it private: chmod 700 ${dir}` };
  return undefined;
}

/** The error daemonCall rejects with when the directory fails the rule: nothing was sent. */
export const DIR_REFUSED = 'EBROKERDIR';

/**
 * One request to the daemon over its Unix socket. On the credential_process fast path, so it
 * imports nothing but builtins. First checks the socket's directory (runtimeDirProblem): a failing
 * check rejects with code DIR_REFUSED (and a `hint`) without connecting. Rejects with the socket
 * error (ENOENT / ECONNREFUSED mean "no daemon") or a timeout; a daemon-side failure comes back as
 * `{ ok: false, error }`.
 */
export function daemonCall<T>(socket: string, request: DaemonRequest, timeoutMs: number): Promise<DaemonResponse<T>> {
  return new Promise((resolve, reject) => {
    let refused: RuntimeDirProblem | undefined;
    try {
      refused = runtimeDirProblem(dirname(socket));
    } catch (e) {
      reject(e); // ENOENT: no directory, so no daemon (isNoDaemon); anything else as it is
      return;
    }
    if (refused) {
      reject(Object.assign(new Error(`refusing to connect to the broker daemon: ${refused.problem}`), { code: DIR_REFUSED, hint: refused.hint }));
      return;
    }
    const s = connect(socket);
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(Object.assign(new Error(`the broker daemon did not answer within ${Math.round(timeoutMs / 1000)}s`), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    s.setEncoding('utf8');
    s.on('connect', () => s.write(`${JSON.stringify(request)}\n`));
    s.on('data', (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      s.end();
      try {
        resolve(JSON.parse(buf.slice(0, nl)) as DaemonResponse<T>);
      } catch {
        reject(new Error('the broker daemon sent a malformed answer'));
      }
    });
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
    s.on('end', () => {
      clearTimeout(timer);
      if (!buf.includes('\n')) reject(Object.assign(new Error('the broker daemon closed the connection without answering'), { code: 'ECONNRESET' }));
    });
  });
}

/** Socket errors that mean no daemon is listening (as opposed to one that failed). */
export function isNoDaemon(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException)?.code;
  return code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'ENOTSOCK';
}
