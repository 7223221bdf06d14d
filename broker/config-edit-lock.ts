import { breakStaleLock, pidExists, tryInstanceLock, type LockHolder } from './daemon/instance-lock.js';
import { BrokerError } from './errors.js';

/**
 * One editor of a file at a time (the AWS config file: `broker configure aws`, and every `broker
 * exec` that adds its task's profile, may run at once): a lock file `<file>.broker-lock` beside it,
 * created with O_EXCL and holding the holder's pid, taken for the whole read-modify-write. The same
 * primitives as the daemon's instance lock (instance-lock.ts), so a takeover removes exactly the
 * file it judged stale.
 *
 * An edit holds it for milliseconds. A lock is stale when its holder is gone, or when it is older
 * than EDIT_LOCK_STALE_MS whoever holds it: the file lives in $HOME and survives a reboot, after
 * which its pid may name an unrelated process. A waiter gives up after EDIT_LOCK_WAIT_MS, longer
 * than that, so a live but stuck holder is taken over within one wait.
 */
export const EDIT_LOCK_STALE_MS = 15_000;
export const EDIT_LOCK_WAIT_MS = 20_000;

export const editLockPath = (file: string): string => `${file}.broker-lock`;

export async function withConfigEditLock<T>(file: string, edit: () => Promise<T>): Promise<T> {
  const lockFile = editLockPath(file);
  const deadline = Date.now() + EDIT_LOCK_WAIT_MS;
  for (;;) {
    const attempt = guarded(lockFile, () => tryInstanceLock(lockFile));
    if (attempt.acquired) {
      try {
        return await edit();
      } finally {
        attempt.lock.release();
      }
    }
    const holder = attempt.holder;
    if (!holder) continue; // released between our open and our read: try again at once
    if (isStale(holder) && guarded(lockFile, () => breakStaleLock(lockFile, holder))) continue;
    if (Date.now() > deadline) {
      throw new BrokerError('conflict', `${file} is being edited by another process${holder.pid ? ` (pid ${holder.pid})` : ''}`, {
        hint: `if no broker command is running, remove the lock: rm ${lockFile}`,
      });
    }
    // Jittered, so waiters that woke together do not collide again.
    await new Promise((r) => setTimeout(r, 10 + Math.random() * 40));
  }
}

function isStale(h: LockHolder): boolean {
  if (h.ageMs > EDIT_LOCK_STALE_MS) return true;
  return h.pid !== undefined && !pidExists(h.pid);
}

function guarded<T>(lockFile: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new BrokerError('invalid_config', `cannot use the lock file ${lockFile}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, {
      cause: e, hint: 'check the permissions of the directory it is in',
    });
  }
}

