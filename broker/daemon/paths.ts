import { homedir } from 'node:os';
import { join } from 'node:path';

/**
 * Where the per-user daemon lives. Imported by the credential_process fast path, so it stays tiny:
 * no other module of ours, nothing but node:os and node:path.
 *
 * `$XDG_RUNTIME_DIR/agent-credential-broker` (a per-user tmpfs that the login manager creates 0700,
 * XDG Base Directory spec), else `~/.agent-credential-broker/run`. Either way the directory is ours
 * alone (0700), and the daemon refuses to start otherwise.
 */
export const APP_DIR_NAME = 'agent-credential-broker';

export function runtimeDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_RUNTIME_DIR;
  // The spec says a relative value must be ignored.
  if (xdg && xdg.startsWith('/')) return join(xdg, APP_DIR_NAME);
  return join(env.HOME || homedir(), `.${APP_DIR_NAME}`, 'run');
}

export const socketPath = (env: NodeJS.ProcessEnv = process.env): string => join(runtimeDir(env), 'daemon.sock');
export const pidPath = (env: NodeJS.ProcessEnv = process.env): string => join(runtimeDir(env), 'daemon.pid');
export const logPath = (env: NodeJS.ProcessEnv = process.env): string => join(runtimeDir(env), 'daemon.log');

/** sun_path holds 108 bytes on Linux and 104 on macOS, each with a terminating NUL (unix(7)). */
export const MAX_SOCKET_PATH_BYTES = process.platform === 'linux' ? 107 : 103;
