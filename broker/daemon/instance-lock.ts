import { randomUUID } from 'node:crypto';
import { closeSync, fstatSync, openSync, readFileSync, statSync, unlinkSync, writeSync } from 'node:fs';

/**
 * One daemon per runtime directory: a lock file created with O_EXCL (atomic: of all the starters
 * that race, exactly one creates it), holding the holder's pid and a random token.
 *
 * Whether a holder is still alive is NOT judged from its pid alone: after a crash or a reboot (the
 * fallback directory under $HOME survives reboots) the pid may belong to an unrelated process, and
 * kill(pid, 0) answers EPERM for another user's. The daemon decides from its socket whether a holder
 * is stale (daemon.ts: no listener there, and the holder is dead or has had ample time to listen),
 * then `breakStaleLock` removes exactly the file it judged — same inode, same token — under a second
 * O_EXCL guard, so two starters that both judged it stale cannot both take it over: one removes it,
 * and both then race on O_EXCL again, which one wins.
 */
export interface LockHolder {
  /** The holder's pid, or undefined while the file is still empty (its creator has not written yet). */
  pid: number | undefined;
  token: string | undefined;
  /** How long ago the file was created (its mtime: it is written once, right after creation). */
  ageMs: number;
  ino: number;
  mtimeMs: number;
}

export interface InstanceLock {
  /** Removes the lock file, if it is still this holder's. */
  release(): void;
  /** Is the lock file still this holder's (nobody judged it stale and took it over)? */
  owns(): boolean;
}

export type LockAttempt = { acquired: true; lock: InstanceLock } | { acquired: false; holder: LockHolder | undefined };

/**
 * How long a starter waits for the lock's holder to answer on the socket before giving up. A holder
 * listens within milliseconds of taking the lock (everything heavy is loaded before), but it answers
 * only once it has read the keychain, which can take a while on a loaded machine.
 */
export const LOCK_WAIT_MS = 10_000;
/**
 * A lock held this long with nobody listening on the socket is stale, even if its pid exists: that
 * pid is another process now (reused after a crash or reboot). Well under LOCK_WAIT_MS, so a starter
 * that finds a stale lock takes it over within its wait.
 */
export const STALE_LOCK_MS = 5_000;
/**
 * A takeover holds the guard for a few system calls; one older than this was left by a starter that
 * died in the middle of one.
 */
const GUARD_STALE_MS = 5_000;

export function tryInstanceLock(file: string): LockAttempt {
  const token = randomUUID();
  let fd: number;
  try {
    fd = openSync(file, 'wx', 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    return { acquired: false, holder: readHolder(file) };
  }
  try {
    writeSync(fd, `${process.pid} ${token}\n`);
  } finally {
    closeSync(fd);
  }
  const owns = () => {
    try {
      return readHolder(file)?.token === token;
    } catch {
      return true; // cannot tell (the file is unreadable): not a reason to stop a working daemon
    }
  };
  return {
    acquired: true,
    lock: {
      owns,
      release: () => {
        try {
          if (owns()) unlinkSync(file);
        } catch { /* already gone */ }
      },
    },
  };
}

/**
 * The current holder as written in the file; undefined when there is no file. Any other failure
 * (a file this user cannot read, left by `sudo broker …`) is thrown: waiting would not fix it.
 */
export function readHolder(file: string, now: number = Date.now()): LockHolder | undefined {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    const st = fstatSync(fd);
    const [pidText, token] = readFileSync(fd, 'utf8').trim().split(/\s+/);
    const pid = Number.parseInt(pidText ?? '', 10);
    return {
      pid: Number.isInteger(pid) && pid > 0 ? pid : undefined,
      token: token || undefined,
      // Date.now() is whole milliseconds and mtime has sub-millisecond precision (and some
      // filesystems stamp with their own clock), so a file written this instant can look a
      // fraction of a millisecond "in the future": an age is never negative.
      ageMs: Math.max(0, now - st.mtimeMs),
      ino: st.ino,
      mtimeMs: st.mtimeMs,
    };
  } finally {
    closeSync(fd);
  }
}

/**
 * Removes the lock file if it is still the one `judged` describes. Returns true when the file is gone
 * (removed here or already), false when it was replaced meanwhile or another takeover is under way
 * (the caller looks again).
 */
export function breakStaleLock(file: string, judged: LockHolder): boolean {
  const guard = `${file}.takeover`;
  let fd: number;
  try {
    fd = openSync(guard, 'wx', 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    try {
      if (Date.now() - statSync(guard).mtimeMs > GUARD_STALE_MS) unlinkSync(guard);
    } catch { /* removed by its owner meanwhile */ }
    return false;
  }
  try {
    const now = readHolder(file);
    if (!now) return true;
    if (now.ino !== judged.ino || now.mtimeMs !== judged.mtimeMs || now.token !== judged.token || now.pid !== judged.pid) return false;
    unlinkSync(file);
    return true;
  } finally {
    closeSync(fd);
    try { unlinkSync(guard); } catch { /* already gone */ }
  }
}

/** Does a process with this pid exist? (It may be an unrelated one: see the comment at the top.) */
export function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
