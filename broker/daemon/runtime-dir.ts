import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { BrokerError } from '../errors.js';
import { MAX_SOCKET_PATH_BYTES, runtimeDir, runtimeDirProblem, socketPath, usesXdgRuntimeDir } from './socket.cjs';

/**
 * Creates the daemon's directory 0700 if missing, then insists that it is a real directory (not a
 * symlink), owned by this user and closed to group and others. The socket inside it is the door to
 * the developer's credentials: a directory someone else can enter or replace is refused, never fixed
 * up silently (that would hide whoever loosened it).
 */
export function ensureRuntimeDir(env: NodeJS.ProcessEnv = process.env): string {
  const dir = runtimeDir(env);
  const sock = socketPath(env);
  if (Buffer.byteLength(sock) > MAX_SOCKET_PATH_BYTES) {
    throw new BrokerError('invalid_config', `the daemon socket path ${sock} is longer than a Unix socket path may be (${MAX_SOCKET_PATH_BYTES} bytes)`, {
      hint: 'set XDG_RUNTIME_DIR to a short directory of your own (e.g. /run/user/$(id -u))',
    });
  }
  try {
    // The fallback lives in ~/.agent-credential-broker/run: its parent is ours alone too.
    if (!usesXdgRuntimeDir(env)) mkdirSync(dirname(dir), { recursive: true, mode: 0o700 });
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new BrokerError('invalid_config', `cannot create the daemon directory ${dir}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, {
      cause: e, hint: 'check the permissions of its parent directory',
    });
  }
  checkPrivate(dir);
  return dir;
}

/** The rule every client applies too (socket.cts), so a directory the daemon would refuse is never used. */
function checkPrivate(dir: string): void {
  const r = runtimeDirProblem(dir);
  if (r) throw new BrokerError('invalid_config', `refusing to start: ${r.problem}`, { hint: r.hint });
}
