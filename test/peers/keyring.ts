import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KEYCHAIN_SERVICE } from '../../broker/keychain.js';
import { REPO_ROOT } from './paths.js';

/**
 * A private OS keychain for one test file: its own D-Bus session bus and an unlocked gnome-keyring
 * (the Secret Service that @napi-rs/keyring uses on Linux), so a test can take the keychain away
 * (`stopKeyring`) without disturbing other tests. Processes given `env` use this keychain.
 */
export interface TestKeyring {
  env: { DBUS_SESSION_BUS_ADDRESS: string };
  /**
   * Takes the keychain away: stops gnome-keyring and the bus. (With the bus left up, D-Bus
   * activation would start a fresh, locked and empty keyring: "no entry", not "no keychain".)
   */
  takeAway(): Promise<void>;
  /** The secret stored under the broker's service name for `account` (read as a client would). */
  read(account: string): string | null;
  /** Stores `secret` under the broker's service name for `account` (as an older broker, or a restore, would). */
  write(account: string, secret: string): void;
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.on('exit', () => { for (const c of running) c.kill('SIGKILL'); });

function track(c: ChildProcess): Promise<void> {
  running.add(c);
  return new Promise((r) => c.once('exit', () => { running.delete(c); r(); }));
}

async function kill(c: ChildProcess, exited: Promise<void>): Promise<void> {
  if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
  const t = setTimeout(() => c.kill('SIGKILL'), 3_000);
  await exited;
  clearTimeout(t);
}

export async function startKeyring(): Promise<TestKeyring> {
  const dir = mkdtempSync(join(tmpdir(), 'broker-keyring-'));
  mkdirSync(join(dir, 'run'), { mode: 0o700 });
  const bus = spawn('dbus-daemon', ['--session', '--nofork', '--print-address=1', `--address=unix:path=${join(dir, 'bus')}`], { stdio: ['ignore', 'pipe', 'ignore'] });
  const busExited = track(bus);
  const address = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('dbus-daemon did not print its address')), 10_000);
    bus.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const line = out.split('\n')[0];
      if (out.includes('\n') && line) { clearTimeout(timer); resolve(line.trim()); }
    });
    bus.once('error', (e) => { clearTimeout(timer); reject(new Error(`cannot run dbus-daemon (scripts/setup.sh installs it): ${e.message}`)); });
  });
  const env = { DBUS_SESSION_BUS_ADDRESS: address };
  const keyring = spawn('gnome-keyring-daemon', ['--foreground', '--unlock', '--components=secrets'], {
    stdio: ['pipe', 'ignore', 'ignore'],
    env: { ...process.env, ...env, XDG_DATA_HOME: join(dir, 'data'), XDG_RUNTIME_DIR: join(dir, 'run') },
  });
  const keyringExited = track(keyring);
  keyring.stdin!.end('throwaway-test-keyring-password');
  const deadline = Date.now() + 10_000;
  for (;;) {
    const r = spawnSync('dbus-send', ['--session', '--print-reply', '--dest=org.freedesktop.DBus', '/org/freedesktop/DBus',
      'org.freedesktop.DBus.NameHasOwner', 'string:org.freedesktop.secrets'], { env: { ...process.env, ...env }, encoding: 'utf8' });
    if (r.stdout?.includes('boolean true')) break;
    if (Date.now() > deadline) throw new Error('gnome-keyring-daemon did not start its Secret Service');
    await new Promise((res) => setTimeout(res, 100));
  }
  const takeAway = async () => {
    await kill(keyring, keyringExited);
    await kill(bus, busExited);
  };
  return {
    env,
    takeAway,
    read(account) {
      const script = `import('@napi-rs/keyring').then(async ({ AsyncEntry }) => {
        const v = await new AsyncEntry(${JSON.stringify(KEYCHAIN_SERVICE)}, process.argv[1], { linux: { store: 'secret-service' } }).getPassword();
        process.stdout.write(JSON.stringify(v ?? null));
      })`;
      const r = spawnSync(process.execPath, ['-e', script, account], { cwd: REPO_ROOT, env: { ...process.env, ...env }, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`reading the test keyring failed: ${r.stderr}`);
      return JSON.parse(r.stdout) as string | null;
    },
    write(account, secret) {
      const script = `import('@napi-rs/keyring').then(async ({ AsyncEntry }) => {
        await new AsyncEntry(${JSON.stringify(KEYCHAIN_SERVICE)}, process.argv[1], { linux: { store: 'secret-service' } }).setPassword(process.argv[2]);
      })`;
      const r = spawnSync(process.execPath, ['-e', script, account, secret], { cwd: REPO_ROOT, env: { ...process.env, ...env }, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`writing the test keyring failed: ${r.stderr}`);
    },
    stop: async () => {
      await takeAway();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
