/**
 * The daemon's memory is closed to the developer's other processes: a second process of the same
 * (ordinary) user can read neither /proc/<daemon>/mem nor /proc/<daemon>/environ, while the same
 * reads of a plain Node process of that user succeed (the control that shows the reads work).
 *
 * Root (or anyone with CAP_SYS_PTRACE) may read any process's memory, so the property only shows
 * for an ordinary user: the test makes a throwaway one (useradd), and runs as that user a keychain
 * of its own (scripts/with-keychain.sh), the broker daemon, a plain Node process, and the reader.
 * The user is removed afterwards (userdel -r), also after a failure.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { run } from './peers/cli.js';
import { BROKER_BIN, REPO_ROOT } from './peers/paths.js';

const isRoot = process.getuid?.() === 0;
const user = `broker-t-${randomBytes(4).toString('hex')}`;

/** What the user's script reports: per process, the result of each read. */
interface Reads { environ: string; maps: string; mem: string }
interface Report { started: string; status: { pid: number; memory: { protected: boolean; how?: string; reason?: string } }; daemon: Reads; control: Reads }

/**
 * Runs as the throwaway user, inside its own D-Bus session and gnome-keyring: starts the daemon
 * (BROKER_URL is set, so the daemon reads the keychain at start: no keychain, no start), starts a
 * plain Node process, then tries, from this (second) process, to read each one's environ and, at
 * an address from its maps, its mem. Prints one JSON report.
 */
const SCRIPT = `
const { spawn, spawnSync } = require('node:child_process');
const { closeSync, openSync, readFileSync, readSync } = require('node:fs');
const [node, bin] = process.argv.slice(1);
const broker = (...args) => spawnSync(node, [bin, ...args], { encoding: 'utf8', timeout: 30000 });
const tryRead = (fn) => { try { return fn(); } catch (e) { return e.code || String(e); } };
function reads(pid) {
  const environ = tryRead(() => (readFileSync('/proc/' + pid + '/environ').length > 0 ? 'ok' : 'empty'));
  let address;
  const maps = tryRead(() => {
    const line = readFileSync('/proc/' + pid + '/maps', 'utf8').split('\\n').find((l) => /^[0-9a-f]+-[0-9a-f]+ r/.test(l));
    address = BigInt('0x' + line.split('-')[0]);
    return 'ok';
  });
  const mem = tryRead(() => {
    const fd = openSync('/proc/' + pid + '/mem', 'r');
    try {
      const buf = Buffer.alloc(16);
      // No address known (maps refused): the open is what is refused anyway; read at 0 to say so.
      const n = readSync(fd, buf, 0, buf.length, address ?? 0n);
      return n === buf.length ? 'ok' : 'short read';
    } finally { closeSync(fd); }
  });
  return { environ, maps, mem };
}
const started = broker('daemon', 'start');
const status = JSON.parse(broker('daemon', 'status', '--json').stdout || '{}');
const control = spawn(node, ['-e', 'setInterval(() => {}, 1e9)'], { stdio: 'ignore' });
// What it did on stdout; anything on stderr (a warning) follows it.
const report = { started: started.status + ' ' + (started.stdout + started.stderr).trim(), status };
setTimeout(() => {
  report.daemon = status.pid ? reads(status.pid) : null;
  report.control = reads(control.pid);
  control.kill('SIGKILL');
  broker('daemon', 'stop');
  process.stdout.write(JSON.stringify(report) + '\\n');
}, 300);
`;

describe('the daemon\'s memory, as seen by another process of the same user', { skip: isRoot ? false : 'needs root: to create the ordinary user the property is about (root itself may read any process\'s memory)' }, () => {
  let home: string;
  let report: Report;
  const loosened: { dir: string; mode: number }[] = [];

  before(async () => {
    const add = spawnSync('useradd', ['--create-home', '--shell', '/bin/bash', user], { encoding: 'utf8' });
    assert.equal(add.status, 0, `useradd: ${add.stderr}`);
    home = spawnSync('getent', ['passwd', user], { encoding: 'utf8' }).stdout.split(':')[5]!;
    // The user runs this checkout's Node and broker: every directory above them must be searchable
    // by others. A checkout made in a private directory (mktemp -d is 0700) gets o+x on those
    // directories for the length of this file only: search, not read, restored in after().
    for (const dir of ancestors(BROKER_BIN, process.execPath)) {
      const mode = statSync(dir).mode & 0o7777;
      if ((mode & 0o001) === 0) {
        chmodSync(dir, mode | 0o001);
        loosened.push({ dir, mode });
      }
    }
    for (const p of [process.execPath, BROKER_BIN, join(REPO_ROOT, 'dist', 'cli', 'main.js'), join(REPO_ROOT, 'node_modules', 'koffi', 'package.json'), join(REPO_ROOT, 'scripts', 'with-keychain.sh')]) {
      const ok = spawnSync('runuser', ['-u', user, '--', 'test', '-r', p], {}).status === 0;
      assert.ok(ok, `${p} is not readable by other users: the checkout, and every directory above it, must be (chmod o+rx)`);
    }
    const env = {
      HOME: home, USER: user, LOGNAME: user, PATH: `${join(process.execPath, '..')}:/usr/bin:/bin`,
      XDG_RUNTIME_DIR: join(home, 'run'), BROKER_URL: 'http://127.0.0.1:9',
      // A standing key in the starter's environment, which the daemon must not keep.
      AWS_SECRET_ACCESS_KEY: 'canary-memory-test-secret',
    };
    spawnSync('runuser', ['-u', user, '--', 'mkdir', '-m', '700', env.XDG_RUNTIME_DIR]);
    const r = await run('runuser', ['-u', user, '--', 'env', '-i', ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
      'bash', join(REPO_ROOT, 'scripts', 'with-keychain.sh'), process.execPath, '-e', SCRIPT, process.execPath, BROKER_BIN], { cwd: '/', timeoutMs: 90_000 });
    assert.equal(r.code, 0, r.stderr);
    report = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Report;
  });

  after(() => {
    for (const { dir, mode } of loosened.reverse()) chmodSync(dir, mode);
    if (!home) return;
    // Whatever the test left running as that user (its script stops its own processes; this is
    // the net). By uid from /proc/<pid>/status: /proc/<pid>/ of a non-dumpable process is root's.
    const uid = uidOf(user);
    for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
      try {
        const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('Uid:'));
        if (uid !== undefined && line?.split(/\s+/)[1] === String(uid)) process.kill(Number(pid), 'SIGKILL');
      } catch { /* gone */ }
    }
    const del = spawnSync('userdel', ['-r', user], { encoding: 'utf8' });
    assert.equal(del.status, 0, `userdel -r ${user}: ${del.stderr}`);
  });

  it('the daemon started, as that user, and reached its keychain', () => {
    assert.match(report.started, /^0 broker daemon: started/);
    assert.ok(report.status.pid > 0);
  });

  it('broker daemon status says the memory is protected, as read back from the kernel', () => {
    assert.equal(report.status.memory.protected, true, JSON.stringify(report.status.memory));
    assert.match(report.status.memory.how ?? '', /PR_SET_DUMPABLE/);
  });

  it('control: the same reads of a plain Node process of that user succeed', () => {
    assert.deepEqual(report.control, { environ: 'ok', maps: 'ok', mem: 'ok' });
  });

  it('the daemon\'s /proc/<pid>/mem and /proc/<pid>/environ cannot be read', () => {
    for (const [what, result] of Object.entries(report.daemon)) assert.ok(result === 'EACCES' || result === 'EPERM', `${what}: ${result}`);
  });
});

function uidOf(name: string): number | undefined {
  const r = spawnSync('id', ['-u', name], { encoding: 'utf8' });
  return r.status === 0 ? Number(r.stdout.trim()) : undefined;
}

/** Every directory from / down to each path's parent (paths resolved through symlinks), once each. */
function ancestors(...paths: string[]): string[] {
  const dirs = new Set<string>();
  for (const p of paths) {
    for (let d = dirname(realpathSync(p)); ; d = dirname(d)) {
      dirs.add(d);
      if (d === dirname(d)) break;
    }
  }
  return [...dirs].sort((a, b) => a.length - b.length);
}
