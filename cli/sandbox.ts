import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readlinkSync, realpathSync } from 'node:fs';
import { isAbsolute, relative, resolve } from 'node:path';
import { BrokerError } from '../broker/errors.js';

/**
 * `broker exec --sandbox`: the command runs under bubblewrap (bwrap(1)) where the daemon's socket
 * and runtime directory, the D-Bus session bus, the keychain's files, ~/.aws, the broker's config,
 * other processes and the login's session keyring are out of reach. The network is shared: the
 * loopback container credentials endpoint is how the agent gets its task's credentials.
 */

/** Where the exec's token file is seen inside the sandbox. */
export const SANDBOX_TOKEN_FILE = '/run/agent-credential-broker/token';

/** The bwrap binary: BROKER_BWRAP overrides the path (tests point it at a missing one). */
export function bwrapPath(env: NodeJS.ProcessEnv): string {
  return env.BROKER_BWRAP || 'bwrap';
}

/** Environment variables that point at what the sandbox hides: left out so nothing looks for them. */
export const SANDBOX_UNSET = [
  'DBUS_SESSION_BUS_ADDRESS', 'XDG_RUNTIME_DIR', 'SSH_AUTH_SOCK', 'GNOME_KEYRING_CONTROL', 'GPG_AGENT_INFO',
] as const;

export interface Bind { src: string; dst: string; readOnly: boolean }

/** `SRC[:DST]` of --bind / --ro-bind: SRC relative to the working directory; DST defaults to SRC. */
export function parseBind(value: string, readOnly: boolean, cwd: string): Bind {
  const i = value.indexOf(':');
  const src = resolve(cwd, i < 0 ? value : value.slice(0, i));
  const dst = i < 0 ? src : value.slice(i + 1);
  const flag = readOnly ? '--ro-bind' : '--bind';
  if (!isAbsolute(dst)) throw new BrokerError('invalid_request', `${flag} ${value.slice(0, 80)}: the destination must be an absolute path`, { hint: `${flag} SRC[:DST], e.g. ${flag} ~/.gitconfig:/home/me/.gitconfig` });
  if (!existsSync(src)) throw new BrokerError('invalid_request', `${flag} ${value.slice(0, 80)}: ${src} does not exist`, { hint: 'bind an existing file or directory' });
  return { src, dst, readOnly };
}

const inside = (dir: string, path: string) => { const r = relative(dir, path); return r === '' || (!r.startsWith('..') && !isAbsolute(r)); };

/**
 * Fails (exit 125) unless bwrap can make the namespaces here: never runs the command unsandboxed.
 * The probe uses the same namespaces as the real run (a user namespace when not root, a pid one).
 */
export function checkSandbox(env: NodeJS.ProcessEnv): void {
  const bwrap = bwrapPath(env);
  const r = spawnSync(bwrap, ['--unshare-pid', '--die-with-parent', '--ro-bind', '/', '/', '--proc', '/proc', 'true'], { encoding: 'utf8', env: { PATH: env.PATH ?? '/usr/bin:/bin' } });
  if (r.error) {
    const missing = (r.error as NodeJS.ErrnoException).code === 'ENOENT';
    throw new BrokerError('invalid_request', missing ? `--sandbox: bubblewrap (${bwrap}) is not installed; the command was not run` : `--sandbox: cannot run ${bwrap} (${(r.error as NodeJS.ErrnoException).code}); the command was not run`, {
      hint: 'install it (Debian/Ubuntu: sudo apt-get install bubblewrap) or set BROKER_BWRAP to its path; there is no unsandboxed fallback',
    });
  }
  if (r.status !== 0) {
    const why = (r.stderr || '').trim().split('\n').pop()?.slice(0, 200) ?? '';
    throw new BrokerError('invalid_request', `--sandbox: bubblewrap cannot create the sandbox here (${why}); the command was not run`, {
      hint: 'unprivileged user namespaces may be off (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0, or an AppArmor/container policy); there is no unsandboxed fallback',
    });
  }
}

/**
 * bwrap's arguments, up to and including `--`, for running a command in `cwd` with `home` as HOME.
 * Order matters: bwrap applies them in turn, so the tmpfs over HOME comes before the binds under it.
 */
export function sandboxArgs(o: { cwd: string; home: string; tokenFile: string | undefined; binds: Bind[] }): string[] {
  const cwd = realpathSync(o.cwd);
  const home = resolve(o.home);
  // The working directory is bound read-write: HOME itself or one above it would bring back
  // ~/.aws, the keychain's files and the broker's config (and, outside tests, nothing is gained).
  if (inside(cwd, home) || inside(cwd, realpathSync(home))) {
    throw new BrokerError('invalid_request', `--sandbox: the working directory ${cwd} is HOME or contains it, and is bound read-write into the sandbox`, {
      hint: 'run broker exec --sandbox from a project directory (cd ~/src/project)',
    });
  }
  const a = ['--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try', '--die-with-parent', '--new-session'];
  a.push('--ro-bind', '/usr', '/usr');
  for (const d of ['/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32']) {
    if (!existsSync(d)) continue;
    const st = lstatSync(d);
    if (st.isSymbolicLink()) a.push('--symlink', readlinkSync(d), d);
    else a.push('--ro-bind', d, d);
  }
  a.push('--ro-bind', '/etc', '/etc');
  // A resolver configuration that is a link into /run (systemd-resolved) must stay resolvable.
  try {
    const real = realpathSync('/etc/resolv.conf');
    if (real.startsWith('/run/')) a.push('--tmpfs', '/run', '--ro-bind', real, real);
    else a.push('--tmpfs', '/run');
  } catch { a.push('--tmpfs', '/run'); }
  a.push('--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', '--tmpfs', '/var/tmp');
  a.push('--tmpfs', home, '--bind', cwd, cwd);
  for (const b of o.binds) a.push(b.readOnly ? '--ro-bind' : '--bind', b.src, b.dst);
  if (o.tokenFile) a.push('--ro-bind', o.tokenFile, SANDBOX_TOKEN_FILE);
  a.push('--chdir', cwd, '--');
  return a;
}
