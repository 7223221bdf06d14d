import { lstatSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { BrokerError } from '../errors.js';
import { MAX_SOCKET_PATH_BYTES, runtimeDir, socketPath, usesXdgRuntimeDir } from './socket.cjs';

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

function checkPrivate(dir: string): void {
  const st = lstatSync(dir);
  const uid = process.getuid?.();
  if (!st.isDirectory()) {
    throw new BrokerError('invalid_config', `refusing to start: ${dir} is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a directory'}`, {
      hint: `remove it (rm ${dir}); the daemon creates its directory itself, mode 0700`,
    });
  }
  if (uid !== undefined && st.uid !== uid) {
    throw new BrokerError('invalid_config', `refusing to start: ${dir} belongs to uid ${st.uid}, not to you (uid ${uid})`, {
      hint: `someone else controls where your credentials would be served; remove ${dir} (as its owner) and start again`,
    });
  }
  const mode = st.mode & 0o777;
  if (mode & 0o077) {
    throw new BrokerError('invalid_config', `refusing to start: ${dir} is open to group or others (mode ${mode.toString(8).padStart(4, '0')})`, {
      hint: `make it private: chmod 700 ${dir}`,
    });
  }
}
