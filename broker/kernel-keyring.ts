import { spawn } from 'node:child_process';
import { BrokerError } from './errors.js';

/**
 * The Linux kernel keyring (keyrings(7)) as the login store where there is no Secret Service: SSH
 * boxes, CI runners, containers. Used through keyutils' `keyctl` (Debian `keyutils`), found on PATH.
 *
 * Where: the caller's *session* keyring (`@s`, session-keyring(7)), which every process inherits
 * across fork and execve and which is destroyed when the last process holding it exits; PAM's
 * pam_keyinit creates one per login and typically revokes it at logout. Not the user session keyring
 * (`@us`, user-session-keyring(7)): one per UID, shared by all of the user's processes and kept as
 * long as any of them runs; nor the persistent keyring (persistent-keyring(7)), which is made to
 * outlive logins. When a process has no session keyring the kernel hands it `@us` instead, so that
 * case is refused (`checkSessionKeyring`), never used.
 *
 * Each item is a `user` key named `<service>:<account>` directly in `@s`, with permissions for its
 * possessor only (0x3f000000: view, read, write, search, link, setattr; nothing for the user, group
 * or others), so a process of the same user outside the session, another user, and root reading by
 * key id get EACCES (keyrings(7), "Permissions"; test/kernel-keyring.test.ts). Each item expires at
 * the login's fixed end (`keyctl timeout`), after which the service refuses the token anyway.
 *
 * Secrets go to keyctl on its stdin (`keyctl padd`) and come back on its stdout (`keyctl pipe`),
 * never in its arguments, which any process can read in /proc/<pid>/cmdline.
 */

/** Possessor: view, read, write, search, link, setattr; user, group, other: nothing (keyctl_setperm(3)). */
export const POSSESSOR_ONLY = 0x3f000000;
/** A key expiring sooner than this after a save is given this long: a clock a little ahead must not drop a fresh login. */
const MIN_TIMEOUT_S = 60;
/** keyctl answers in milliseconds; a hung one must not hang the daemon. */
const KEYCTL_TIMEOUT_MS = 10_000;

export const KERNEL_KEYRING_HINT =
  'without a Secret Service the broker keeps its login in the kernel keyring of your login session (keyctl, Debian ' +
  'package keyutils). That needs a session keyring: PAM creates one at login when pam_keyinit is in its session stack ' +
  '(e.g. "session optional pam_keyinit.so force revoke" in /etc/pam.d/sshd), or start a shell with one: keyctl session -. ' +
  'Container runtimes often block the keyring (Docker\'s default seccomp profile does). The broker never falls back to a plaintext file.';

interface KeyctlResult { code: number | null; stdout: string; stderr: string }

function keyctl(args: string[], input?: string): Promise<KeyctlResult> {
  return new Promise((resolve, reject) => {
    // No shell; the secret, when there is one, only on stdin. LC_ALL=C: the error texts matched below.
    const child = spawn('keyctl', args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), KEYCTL_TIMEOUT_MS);
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString('utf8'); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString('utf8'); });
    child.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(e.code === 'ENOENT'
        ? unavailable('keyctl not found (install the keyutils package)')
        : unavailable(`cannot run keyctl: ${e.message}`));
    });
    child.once('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr: stderr.trim() }); });
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });
}

export function unavailable(reason: string): BrokerError {
  return new BrokerError('keychain_unavailable', `no kernel keyring available: ${reason}`, { hint: KERNEL_KEYRING_HINT });
}

/** keyctl's own message ("keyctl_search: Required key not available"), without the function name. */
const reasonOf = (r: KeyctlResult) => r.stderr.replace(/^keyctl_\w+: /, '').split('\n')[0] || `keyctl exited with ${r.code}`;
/** The key is not there (or no longer usable): for a read, nothing stored. */
const GONE = /Required key not available|Key has expired|Key has been revoked/;

function failure(what: string, r: KeyctlResult): BrokerError {
  const reason = reasonOf(r);
  if (/Operation not permitted|Function not implemented/.test(reason)) return unavailable(`the kernel keyring is blocked here (${reason}; a container's seccomp profile?)`);
  if (/Disk quota exceeded/.test(reason)) {
    return new BrokerError('keychain_unavailable', `the kernel keyring is full: ${reason}`, { hint: 'the per-user key quota is in /proc/sys/kernel/keys/maxbytes and maxkeys; remove unused keys (keyctl show @s)' });
  }
  return unavailable(`${what}: ${reason}`);
}

/** The session keyring this process holds, refused when it is really the per-user default one. */
export interface SessionKeyring { serial: number }

let session: Promise<SessionKeyring> | undefined;

/**
 * Resolves `@s` without creating anything: a process without a session keyring is given the user
 * session keyring `_uid_ses.<uid>` (user-session-keyring(7)), which outlives the login, so that is
 * an error here. Cached: a process keeps its session keyring for life unless it joins another.
 */
export function checkSessionKeyring(): Promise<SessionKeyring> {
  session ??= (async () => {
    const d = await keyctl(['rdescribe', '@s']);
    if (d.code !== 0) throw failure('cannot read the session keyring', d);
    // type;uid;gid;perm;description (keyctl_describe(3))
    const description = d.stdout.trim().split(';').slice(4).join(';');
    if (/^_uid_ses\./.test(description)) {
      throw unavailable('this process has no session keyring of its own (only the per-user one, which outlives the login)');
    }
    const id = await keyctl(['id', '@s']);
    const serial = Number(id.stdout.trim());
    if (id.code !== 0 || !Number.isSafeInteger(serial)) throw failure('cannot resolve the session keyring', id);
    return { serial };
  })();
  session.catch(() => { session = undefined; });
  return session;
}

function description(service: string, account: string): string {
  return `${service}:${account}`;
}

/**
 * The id of the item in the session keyring itself, or null when there is none (or it expired).
 * `keyctl search` also descends into keyrings linked from @s, among them the user keyring @u that
 * pam_keyinit links there, which any process of the user can write from outside the session: a
 * key planted there under our name must not be taken for the login. The search looks at @s's own
 * keys before nested keyrings (keyctl_search(3)), so a result that is not a direct member of @s
 * means @s holds none.
 */
async function find(desc: string): Promise<number | null> {
  const r = await keyctl(['search', '@s', 'user', desc]);
  if (r.code !== 0) {
    if (GONE.test(r.stderr)) return null;
    throw failure('cannot search the session keyring', r);
  }
  const id = Number(r.stdout.trim());
  const members = await keyctl(['rlist', '@s']);
  if (members.code !== 0) throw failure('cannot list the session keyring', members);
  return members.stdout.trim().split(/\s+/).map(Number).includes(id) ? id : null;
}

export async function kernelGet(service: string, account: string): Promise<string | null> {
  await checkSessionKeyring();
  const id = await find(description(service, account));
  if (id === null) return null;
  const r = await keyctl(['pipe', String(id)]);
  if (r.code === 0) return r.stdout;
  if (GONE.test(r.stderr)) return null;
  throw failure('cannot read the login from the session keyring', r);
}

export async function kernelSet(service: string, account: string, secret: string, opts: { expiresAt?: number; now?: number } = {}): Promise<void> {
  await checkSessionKeyring();
  // padd creates the key or, when one of that type and name is already in @s, replaces its payload
  // in place (add_key(2)); a new key starts with possessor permissions and user "view" only.
  const added = await keyctl(['padd', 'user', description(service, account), '@s'], secret);
  if (added.code !== 0) throw failure('cannot store the login in the session keyring', added);
  const id = added.stdout.trim();
  const perm = await keyctl(['setperm', id, `0x${POSSESSOR_ONLY.toString(16)}`]);
  if (perm.code !== 0) throw failure('cannot restrict the key to its possessor', perm);
  if (opts.expiresAt !== undefined) {
    const seconds = Math.max(MIN_TIMEOUT_S, Math.ceil((opts.expiresAt - (opts.now ?? Date.now())) / 1000));
    const t = await keyctl(['timeout', id, String(seconds)]);
    if (t.code !== 0) throw failure('cannot set the key\'s expiry', t);
  }
}

export async function kernelDelete(service: string, account: string): Promise<boolean> {
  await checkSessionKeyring();
  const desc = description(service, account);
  let removed = false;
  // Invalidate, not unlink: the key goes from every keyring at once and is collected now (keyctl_invalidate(3)).
  for (let i = 0; i < 5; i++) {
    const id = await find(desc);
    if (id === null) return removed;
    const r = await keyctl(['invalidate', String(id)]);
    if (r.code !== 0 && !GONE.test(r.stderr)) throw failure('cannot remove the login from the session keyring', r);
    removed = true;
  }
  return removed;
}
