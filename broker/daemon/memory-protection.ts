/**
 * Keeps other processes of the same user out of the daemon's memory. Any process running as the
 * developer may otherwise read /proc/<daemon>/mem (the login's refresh token and device key, every
 * task's credentials), /proc/<daemon>/environ, or attach a debugger with ptrace(2).
 *
 * Linux: prctl(PR_SET_DUMPABLE, 0). A process that is not dumpable can be ptrace-attached, and its
 * /proc/<pid>/mem, environ, maps… opened, only with CAP_SYS_PTRACE: the kernel's ptrace access
 * check (ptrace(2), "Ptrace access mode checking") refuses same-user callers, and the files in
 * /proc/<pid>/ belong to root (proc(5)). It is also a second guard against core dumps. Node has no
 * binding for prctl(2), so it is called through koffi (a maintained FFI package with prebuilt
 * binaries), loaded only here: in `broker daemon run`, never on the credential_process path.
 * execve(2) makes a process dumpable again, so this runs after the daemon's re-exec (clean-start.ts).
 *
 * macOS has ptrace(PT_DENY_ATTACH), which is not built: nothing here could test it. There (and on
 * any other platform) `broker daemon status` says the memory is not protected.
 */

import type { MemoryProtection } from './protocol.js';

/** prctl(2) options (linux/prctl.h). */
const PR_GET_DUMPABLE = 3;
const PR_SET_DUMPABLE = 4;

export type { MemoryProtection } from './protocol.js';

let state: MemoryProtection = { protected: false, reason: 'not attempted (the daemon was not started by broker daemon run)' };

/** What protectMemory achieved, as `broker daemon status` reports it. */
export function memoryProtection(): MemoryProtection {
  return state;
}

/** Makes this process non-dumpable where the platform allows it, and records the outcome (read back from the kernel). */
export async function protectMemory(platform: NodeJS.Platform = process.platform): Promise<MemoryProtection> {
  state = await attempt(platform);
  return state;
}

async function attempt(platform: NodeJS.Platform): Promise<MemoryProtection> {
  if (platform !== 'linux') return { protected: false, reason: `not protected on this platform (${platform})` };
  let koffi: typeof import('koffi').default;
  try {
    koffi = (await import('koffi')).default;
  } catch (e) {
    return { protected: false, reason: `the FFI package koffi cannot be loaded here: ${(e as Error).message.split('\n')[0]}` };
  }
  try {
    // dlopen(NULL): the C library Node itself is linked against, whichever it is (glibc, musl).
    const libc = koffi.load(null);
    const prctl = libc.func('int prctl(int option, ...)');
    const ul = 'unsigned long';
    if (prctl(PR_SET_DUMPABLE, ul, 0, ul, 0, ul, 0, ul, 0) !== 0) return { protected: false, reason: `prctl(PR_SET_DUMPABLE, 0) failed (errno ${koffi.errno()})` };
    // Read back from the kernel rather than assumed.
    const now = prctl(PR_GET_DUMPABLE, ul, 0, ul, 0, ul, 0, ul, 0);
    return now === 0
      ? { protected: true, how: 'not dumpable (prctl PR_SET_DUMPABLE 0): other processes of yours cannot read its memory or attach a debugger' }
      : { protected: false, reason: `prctl(PR_GET_DUMPABLE) says ${now} after PR_SET_DUMPABLE 0` };
  } catch (e) {
    return { protected: false, reason: `prctl(2) cannot be called through koffi: ${(e as Error).message.split('\n')[0]}` };
  }
}
