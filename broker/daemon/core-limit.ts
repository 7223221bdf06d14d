import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/**
 * The daemon holds the broker login and task credentials in memory: a core dump would put them on
 * disk (systemd-coredump, apport, a `core` file in the working directory). The systemd unit says
 * LimitCORE=0 and the launchd agent Core 0, but a daemon started on demand inherits the limit of
 * whatever shell ran the first `broker` command. Node has no setrlimit(2), so the daemon re-executes
 * itself once through `sh -c 'ulimit -c 0; exec …'` when its soft limit is not already 0 (`ulimit -c
 * 0` lowers the soft and the hard limit, which any process may do). Only at daemon start: this is
 * never on the credential_process path.
 */

/** The shell prefix that drops the core-size limit, then runs "$@". */
export const NO_CORE_SH = 'ulimit -c 0 2>/dev/null; exec "$@"';
/** Set on the re-executed daemon, so a shell that cannot lower the limit does not loop. */
const REEXEC_MARK = 'BROKER_DAEMON_CORE_LIMIT_REEXEC';

/** The soft RLIMIT_CORE of this process in bytes (Infinity for unlimited), or undefined if unknown. */
export function coreSizeLimit(): number | undefined {
  if (process.platform === 'linux') {
    try {
      // "Max core file size        0                    unlimited            bytes" (proc(5))
      const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max core file size'));
      const soft = line?.slice('Max core file size'.length).trim().split(/\s+/)[0];
      if (soft !== undefined) return soft === 'unlimited' ? Number.POSITIVE_INFINITY : Number(soft);
    } catch { /* fall through to the shell */ }
  }
  // A child shell inherits our limits; `ulimit -c` prints the soft one in 512-byte blocks or "unlimited".
  const r = spawnSync('/bin/sh', ['-c', 'ulimit -c'], { encoding: 'utf8', timeout: 5_000 });
  const out = r.stdout?.trim();
  if (r.status !== 0 || !out) return undefined;
  return out === 'unlimited' ? Number.POSITIVE_INFINITY : Number(out);
}

/**
 * Makes sure this daemon process cannot dump core: returns when the limit is 0 (re-executing the
 * process through the shell first when it is not), or with a reason when it cannot be done.
 */
export function ensureNoCoreDumps(): { ok: true } | { ok: false; reason: string } {
  const limit = coreSizeLimit();
  if (limit === 0) {
    delete process.env[REEXEC_MARK];
    return { ok: true };
  }
  if (process.env[REEXEC_MARK]) {
    delete process.env[REEXEC_MARK];
    return { ok: false, reason: `the shell could not lower it (still ${limit ?? 'unknown'})` };
  }
  // process.execve: Node 22.15 / 23.11 and later (package.json allows Node 22).
  const execve = (process as { execve?: (file: string, args: string[], env: NodeJS.ProcessEnv) => never }).execve;
  if (typeof execve !== 'function') return { ok: false, reason: `this Node (${process.version}) cannot re-execute itself (process.execve)` };
  return execve.call(process, '/bin/sh', ['/bin/sh', '-c', NO_CORE_SH, 'sh', process.execPath, ...process.execArgv, ...process.argv.slice(1)], {
    ...process.env, [REEXEC_MARK]: '1',
  });
}
