/**
 * The OS keychain module against the real thing: gnome-keyring's Secret Service on a private D-Bus
 * session (run this file under scripts/with-keychain.sh, as `npm test` does), and a child process
 * with no session bus at all, which must fail clearly and write nothing.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { KEYCHAIN_SERVICE, keychainDelete, keychainGet, keychainSet } from '../broker/keychain.js';
import { REPO_ROOT } from './peers/paths.js';

const run = promisify(execFile);
const KEYCHAIN_MODULE = pathToFileURL(join(REPO_ROOT, 'dist', 'broker', 'keychain.js')).href;

/**
 * Asks the Secret Service itself (dbus-send, not our binding) which items carry these attributes:
 * the reply is two arrays of object paths, unlocked items then locked ones.
 */
async function secretServiceItems(attributes: Record<string, string>): Promise<string[]> {
  const dict = Object.entries(attributes).flat().join(','); // dbus-send's dict syntax: k1,v1,k2,v2
  const { stdout } = await run('dbus-send', ['--session', '--print-reply', '--dest=org.freedesktop.secrets',
    '/org/freedesktop/secrets', 'org.freedesktop.Secret.Service.SearchItems', `dict:string:string:${dict}`]);
  return [...stdout.matchAll(/object path "(\/org\/freedesktop\/secrets\/collection\/[^"]+)"/g)].map((m) => m[1]!);
}

describe('keychain: gnome-keyring over the Secret Service', () => {
  const account = `test-${randomUUID()}`;
  const other = `test-${randomUUID()}`;

  before(() => {
    assert.ok(process.env.DBUS_SESSION_BUS_ADDRESS, 'no D-Bus session: run this test under bash scripts/with-keychain.sh');
  });
  after(async () => {
    await keychainDelete(account).catch(() => false);
    await keychainDelete(other).catch(() => false);
  });

  it('stores, reads, replaces and deletes a secret', async () => {
    assert.equal(await keychainGet(account), null, 'nothing stored yet');
    await keychainSet(account, 'first-secret');
    assert.equal(await keychainGet(account), 'first-secret');
    await keychainSet(account, 'second secret, ünïcödé ✓');
    assert.equal(await keychainGet(account), 'second secret, ünïcödé ✓');
    assert.equal(await keychainDelete(account), true);
    assert.equal(await keychainGet(account), null);
    assert.equal(await keychainDelete(account), false, 'deleting again reports nothing was there');
  });

  it('keeps accounts apart', async () => {
    await keychainSet(account, 'for-account');
    await keychainSet(other, 'for-other');
    assert.equal(await keychainGet(account), 'for-account');
    assert.equal(await keychainGet(other), 'for-other');
    await keychainDelete(other);
    assert.equal(await keychainGet(account), 'for-account');
  });

  it('puts the entry in the Secret Service under the broker\'s service name', async () => {
    await keychainSet(account, 'visible-to-the-secret-service');
    const items = await secretServiceItems({ service: KEYCHAIN_SERVICE, username: account });
    assert.equal(items.length, 1, `one item in gnome-keyring: ${items.join(', ')}`);
    await keychainDelete(account);
    assert.deepEqual(await secretServiceItems({ service: KEYCHAIN_SERVICE, username: account }), []);
  });

  it('refuses an empty account or secret as a programming error', async () => {
    await assert.rejects(keychainGet(''), TypeError);
    await assert.rejects(keychainSet(account, ''), TypeError);
  });
});

describe('keychain: no D-Bus session', () => {
  const homes: string[] = [];
  after(() => { for (const h of homes) rmSync(h, { recursive: true, force: true }); });

  /** Runs keychainSet then keychainGet in a child with the given bus address and a fresh HOME. */
  async function inChild(busAddress: string | undefined) {
    const home = mkdtempSync(join(tmpdir(), 'broker-nokeychain-'));
    const runtime = mkdtempSync(join(tmpdir(), 'broker-nokeychain-run-'));
    homes.push(home, runtime);
    const script = `
      import { keychainGet, keychainSet } from ${JSON.stringify(KEYCHAIN_MODULE)};
      const out = [];
      for (const op of [() => keychainSet('acct', 'child-secret-value'), () => keychainGet('acct')]) {
        try { await op(); out.push({ ok: true }); }
        catch (e) { out.push({ name: e.name, code: e.code, message: e.message, hint: e.hint }); }
      }
      process.stdout.write(JSON.stringify(out));`;
    // Pinned to the Secret Service: in `auto` a process with a session keyring of its own would use
    // the kernel keyring instead (test/kernel-keyring.test.ts).
    const env: Record<string, string> = { PATH: process.env.PATH ?? '', HOME: home, XDG_RUNTIME_DIR: runtime, XDG_DATA_HOME: join(home, '.local', 'share'), BROKER_LOGIN_STORE: 'secret-service' };
    if (busAddress !== undefined) env.DBUS_SESSION_BUS_ADDRESS = busAddress;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { env, cwd: home, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(code, 0, stderr);
    const written = readdirSync(home, { recursive: true }).map(String);
    return { results: JSON.parse(stdout) as { ok?: true; code?: string; message?: string; hint?: string; name?: string }[], written, output: stdout + stderr };
  }

  for (const [label, bus] of [['unset', undefined], ['pointing at a missing socket', 'unix:path=/nonexistent/broker-test-bus']] as const) {
    it(`DBUS_SESSION_BUS_ADDRESS ${label}: keychain_unavailable, a clear hint, no file written`, async () => {
      const { results, written, output } = await inChild(bus);
      assert.equal(results.length, 2);
      for (const r of results) {
        assert.equal(r.ok, undefined, 'must not succeed without a keychain');
        assert.equal(r.name, 'BrokerError');
        assert.equal(r.code, 'keychain_unavailable');
        assert.match(r.message!, /^no OS keychain available: /);
        assert.match(r.hint!, /Secret Service/);
        assert.match(r.hint!, /gnome-keyring/);
        assert.match(r.hint!, /never falls back to a plaintext file/);
      }
      assert.deepEqual(written, [], 'nothing may be written under HOME');
      assert.ok(!output.includes('child-secret-value'), 'the secret never appears in output');
    });
  }

});
