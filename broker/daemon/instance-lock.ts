import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';

/**
 * One daemon per user: a pid file created with O_EXCL. A file left by a daemon that died is taken
 * over once its process is gone (kill(pid, 0) fails with ESRCH).
 */
export type LockResult = { acquired: true; release(): void } | { acquired: false; pid: number };

export function acquireInstanceLock(file: string): LockResult {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(file, 'wx', 0o600);
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return {
        acquired: true,
        release: () => {
          try {
            if (readPid(file) === process.pid) unlinkSync(file);
          } catch { /* already gone */ }
        },
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const pid = readPid(file);
    if (pid !== undefined && pid !== process.pid && isAlive(pid)) return { acquired: false, pid };
    try { unlinkSync(file); } catch { /* raced with another starter; retry */ }
  }
  const pid = readPid(file);
  return { acquired: false, pid: pid ?? 0 };
}

function readPid(file: string): number | undefined {
  try {
    const n = Number.parseInt(readFileSync(file, 'utf8').trim(), 10);
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
