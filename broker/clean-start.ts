import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/**
 * A process that will hold secrets (the daemon; `broker exec`, which holds a Vault token and, with
 * --env, AWS keys) starts clean, before it holds any, by re-executing itself once, in place (same
 * pid, same arguments), through `sh -c 'ulimit -c 0; exec "$@"'` with the environment it should have:
 *
 * - **Its environment**: /proc/<pid>/environ shows the environment a process was *executed* with,
 *   to every process of the same user (proc(5)); deleting a variable from process.env does not
 *   change it. Standing keys the caller had (AWS_SECRET_ACCESS_KEY, VAULT_TOKEN, …) would stay
 *   readable there for the process's whole life. After execve(2) only the new environment is there.
 * - **No core dumps**: a core file (systemd-coredump, apport, `core` in the working directory) would
 *   put the process's memory, secrets included, on disk. Node has no setrlimit(2); `ulimit -c 0`
 *   lowers the soft and the hard RLIMIT_CORE, which any process may do, and execve keeps it.
 *
 * process.execve exists from Node 22.15 / 23.11 (package.json allows 22). Only at start, never on
 * the credential_process path.
 */

/** The shell prefix that drops the core-size limit, then runs "$@". */
export const NO_CORE_SH = 'ulimit -c 0 2>/dev/null; exec "$@"';

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

/** Variables sh sets in what it executes (dash: PWD; bash: also SHLVL, _, OLDPWD): names the system knows anyway. */
const SHELL_ADDED = new Set(['PWD', 'OLDPWD', 'SHLVL', '_']);

export interface CleanStart {
  /** The environment this process was executed with is `env` (plus the marker, and what sh adds). */
  envClean: boolean;
  coreDumpsOff: boolean;
  /** Why either is false, for a warning. */
  problems: string[];
  /** The marker's value, as the process that re-executed (or started) this one set it. */
  note: string | undefined;
}

/**
 * Makes this process one that was executed with exactly `env` and a core-size limit of 0, by
 * re-executing it (this call then does not return) unless both already hold. `marker` is set, to
 * `note` ('1' by default), in the re-executed process: finding it, this returns (the marker and
 * any variable outside `env` removed from process.env) instead of looping. A starter that already
 * gives the process a clean environment and limit (autostart.ts) sets the marker itself.
 */
export function startClean(opts: { env: NodeJS.ProcessEnv; marker: string; note?: string }): CleanStart {
  const mark = process.env[opts.marker];
  if (mark !== undefined) {
    // Started clean already: no second re-exec (a shell that cannot lower the limit must not make
    // this loop). What it says is checked, not trusted: every variable it was started with is one
    // of `env`'s, the marker, or one a shell adds on its own.
    const extra = Object.keys(process.env).filter((k) => k !== opts.marker && !(k in opts.env) && !SHELL_ADDED.has(k));
    delete process.env[opts.marker];
    for (const k of Object.keys(process.env)) if (!(k in opts.env)) delete process.env[k];
    const limit = coreSizeLimit();
    return {
      envClean: extra.length === 0, coreDumpsOff: limit === 0, note: mark,
      problems: [
        ...(extra.length ? [`it was started with variables it should not have (${extra.sort().join(', ')}), readable by your other processes`] : []),
        ...(limit === 0 ? [] : [`core dumps are not disabled: the shell could not lower the core-size limit (still ${limit ?? 'unknown'})`]),
      ],
    };
  }
  const envClean = sameEnv(process.env, opts.env);
  const limit = coreSizeLimit();
  if (envClean && limit === 0) return { envClean, coreDumpsOff: true, problems: [], note: undefined };
  const execve = (process as { execve?: (file: string, args: string[], env: NodeJS.ProcessEnv) => never }).execve;
  if (typeof execve !== 'function') {
    const why = `this Node (${process.version}) cannot re-execute itself (process.execve)`;
    return {
      envClean, coreDumpsOff: limit === 0, note: undefined,
      problems: [...(envClean ? [] : [`the environment it was started with stays readable by your other processes: ${why}`]), ...(limit === 0 ? [] : [`core dumps are not disabled: ${why}`])],
    };
  }
  return execve.call(process, '/bin/sh', ['/bin/sh', '-c', NO_CORE_SH, 'sh', process.execPath, ...process.execArgv, ...process.argv.slice(1)], {
    ...opts.env, [opts.marker]: opts.note ?? '1',
  });
}

function sameEnv(a: NodeJS.ProcessEnv, b: NodeJS.ProcessEnv): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => b[k] === a[k]);
}
