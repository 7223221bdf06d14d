/**
 * `broker login` through a real browser: the compiled CLI against a real `broker server`, the real
 * oidc-provider and its login form, and Debian's chromium driven headless by playwright-core (as
 * the request page's test). The CLI opens the browser through `$BROWSER`, set to a small script that
 * hands the URL to the test, which opens it in chromium; `DISPLAY` is set (to nothing real) so the
 * CLI believes a graphical session is there. `--remote` gets the address the browser ends on pasted
 * on its stdin, as a person would copy it from the address bar.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { EXIT_CODES } from '../broker/errors.js';
import { broker, deviceLogin, makeTestHome, type RunResult, type TestHome } from './peers/cli.js';
import { TEST_PASSWORD } from './peers/idp.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { BROKER_BIN } from './peers/paths.js';
import { filesContaining, filesWithTokensFrom } from './peers/secret-scan.js';
import { startStack, type Stack } from './peers/stack.js';

const CHROMIUM = '/usr/bin/chromium';

describe('broker login in the browser (authorization code + PKCE, loopback redirect), in chromium', () => {
  let stack: Stack;
  let keyring: TestKeyring;
  let m: TestHome;
  let env: Record<string, string>;
  let browser: Browser;
  let svc: string;
  /** Where the $BROWSER script writes each URL it is asked to open, one a line. */
  let openedFile: string;
  /** Everything seen on the way that must not be on disk: scanned at the end. */
  const secrets: string[] = [];
  /** The callback pages as the browser got them, and every CLI output: scanned at the end. */
  const keptDir = mkdtempSync(join(tmpdir(), 'broker-login-pages-'));
  let kept = 0;
  const keep = (name: string, text: string) => writeFileSync(join(keptDir, `${kept++}-${name}`), text);

  const account = () => `login:${svc}`;
  const stored = () => {
    const raw = keyring.read(account());
    return raw ? JSON.parse(raw) as { developer: string; refreshToken: string } : null;
  };
  const collectLogin = () => {
    const s = stored();
    if (s) secrets.push(s.refreshToken);
    const key = keyring.read(`device-key:${svc}`);
    if (key) secrets.push((JSON.parse(key) as { d: string }).d);
  };

  /** The next URL the CLI had its browser open. */
  const nextOpened = async (seen: number): Promise<string> => {
    for (let i = 0; i < 600; i++) {
      const lines = existsSync(openedFile) ? readFileSync(openedFile, 'utf8').split('\n').filter(Boolean) : [];
      if (lines.length > seen) return lines[seen]!;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('the CLI did not open a browser');
  };
  const openedCount = () => (existsSync(openedFile) ? readFileSync(openedFile, 'utf8').split('\n').filter(Boolean).length : 0);

  /** `broker login` (default flow) with the browser script; `drive` does the browser's part. */
  const loginInBrowser = async (drive: (url: string) => Promise<void>, args: string[] = []): Promise<RunResult> => {
    const seen = openedCount();
    const run = broker(['login', '--server', svc, ...args], env);
    const url = await nextOpened(seen);
    await drive(url);
    const r = await run;
    keep('cli.txt', r.stdout + r.stderr);
    return r;
  };

  /**
   * On the IdP's sign-in page: email and password, then consent when asked; the page the browser
   * lands on back at the CLI's listener, and the callback URL it was sent to.
   */
  const signIn = async (p: Page, url: string, email: string): Promise<{ callback: string }> => {
    const callback = p.waitForRequest((r) => new URL(r.url()).origin !== stack.idp.issuer && new URL(r.url()).pathname === '/callback', { timeout: 60_000 });
    await p.goto(url);
    await p.fill('form#login input[name=email]', email);
    await p.fill('form#login input[name=password]', TEST_PASSWORD);
    await p.click('form#login button[type=submit]');
    // The IdP asks for consent the first time a person logs in to the client.
    const consent = p.waitForSelector('form#consent', { timeout: 60_000 }).then(() => true, () => false);
    if (await Promise.race([callback.then(() => false), consent])) await p.click('form#consent button[type=submit]');
    const cb = (await callback).url();
    const code = new URL(cb).searchParams.get('code');
    if (code) secrets.push(code);
    return { callback: cb };
  };

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: install Debian's chromium (bash scripts/setup.sh, or apt-get install chromium)`);
    }
    stack = await startStack();
    svc = stack.svc.url;
    keyring = await startKeyring();
    m = makeTestHome('broker-login-');
    openedFile = join(m.home, 'opened-urls');
    const script = join(m.home, 'open-in-test-browser');
    writeFileSync(script, '#!/bin/sh\nprintf \'%s\\n\' "$1" >> "$BROKER_TEST_OPENED"\n');
    chmodSync(script, 0o700);
    // The CLI's temporary directory is the test's own, so the scan at the end covers it whole.
    mkdirSync(join(m.home, 'tmp'), { mode: 0o700 });
    env = { ...m.env, ...keyring.env, TMPDIR: join(m.home, 'tmp'), BROWSER: script, DISPLAY: ':99', WAYLAND_DISPLAY: '', BROKER_TEST_OPENED: openedFile };
    // Root in a container has no user namespace for chromium's sandbox.
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, chromiumSandbox: process.getuid?.() !== 0 });
  });
  after(async () => {
    await browser?.close();
    await m?.stop();
    await keyring?.stop();
    await stack?.stop();
  });

  it('by default: opens the browser at the IdP, the login there comes back to the loopback listener, the page says done (no token in it), the login is in the keychain', async () => {
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    let authorization: URL | undefined;
    const r = await loginInBrowser(async (url) => {
      authorization = new URL(url);
      await signIn(p, url, 'alice@example.com');
      await p.waitForSelector('#login-done');
      keep('done.html', await p.content());
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `Logged in to ${svc} as alice@example.com (groups: developers)\n`);
    assert.match(r.stderr, /^Opened the login page in your browser\. If it did not open, open:/);
    assert.doesNotMatch(r.stderr, /confirm the code/, 'no device code');
    assert.equal(authorization!.origin, stack.idp.issuer);
    assert.equal(authorization!.searchParams.get('code_challenge_method'), 'S256');
    assert.match(authorization!.searchParams.get('redirect_uri')!, /^http:\/\/127\.0\.0\.1:\d+\/callback$/);
    assert.match(await p.locator('#login-done').innerText(), /Login done/);
    assert.equal(stored()?.developer, 'alice@example.com');
    collectLogin();
    // The listener is gone once the login is done.
    await assert.rejects(fetch(new URL('/', authorization!.searchParams.get('redirect_uri')!)));
    await ctx.close();
  });

  it('--remote: prints the URL, the browser ends on an address nothing serves, pasting it logs in', async () => {
    const opened = openedCount();
    const child = spawn(process.execPath, [BROKER_BIN, 'login', '--remote'], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    const url = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no URL printed: ${stderr}`)), 60_000);
      child.stderr.on('data', (c: Buffer) => {
        stderr += c.toString();
        const found = /^ {2}(http:\/\/\S+)$/m.exec(stderr);
        if (found && /paste it here:/.test(stderr)) { clearTimeout(t); resolve(found[1]!); }
      });
    });
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.match(stderr, /fails to load it \(nothing listens there on your machine\)/);
    assert.match(stderr, /Copy that whole address from its address bar/);
    assert.equal(openedCount(), opened, 'no browser opened');
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    const { callback } = await signIn(p, url, 'carol@example.com');
    assert.ok(callback.startsWith(new URL(url).searchParams.get('redirect_uri')!), 'the redirect the CLI named');
    child.stdin.end(`${callback}\n`);
    const code = await exited;
    keep('remote-cli.txt', stdout + stderr);
    assert.equal(code, 0, stderr);
    assert.equal(stdout, `Logged in to ${svc} as carol@example.com (groups: developers, admins)\n`);
    assert.equal(stored()?.developer, 'carol@example.com');
    collectLogin();
    await ctx.close();
  });

  it('a login with another state comes back and is refused (exit 4); the page says failed; the login stays as it was', async () => {
    const before = keyring.read(account());
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    const r = await loginInBrowser(async (url) => {
      const u = new URL(url);
      u.searchParams.set('state', 'state-of-another-login-aaaaaaaaaaaaaaaaaaaaa');
      await signIn(p, u.href, 'alice@example.com');
      await p.waitForSelector('#login-failed');
      keep('state.html', await p.content());
    });
    assert.equal(r.code, EXIT_CODES.unauthenticated, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /broker: the login answer is not for this login \(its state does not match\)/);
    assert.match(await p.locator('body').innerText(), /Login failed/);
    assert.equal(keyring.read(account()), before);
    await ctx.close();
  });

  it('cancel at the IdP (access_denied) is refused (exit 5); the page says failed', async () => {
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    const r = await loginInBrowser(async (url) => {
      await p.goto(url);
      await p.click('form#abort button[type=submit]');
      await p.waitForSelector('#login-failed');
      keep('denied.html', await p.content());
    });
    assert.equal(r.code, EXIT_CODES.forbidden, r.stderr);
    assert.match(r.stderr, /broker: the login was denied at the identity provider/);
    await ctx.close();
  });

  it('--device still logs in with a code; with no graphical session, or no browser command, the default falls back to it', async () => {
    const d = await deviceLogin(svc, env, stack.idp, 'bob@example.com');
    keep('device.txt', d.stdout + d.stderr);
    assert.equal(d.code, 0, d.stderr);
    assert.match(d.stderr, /confirm the code/);
    const seen = openedCount();
    const noDisplay = await deviceLogin(svc, { ...env, DISPLAY: '' }, stack.idp, 'bob@example.com', []);
    keep('nodisplay.txt', noDisplay.stdout + noDisplay.stderr);
    assert.equal(noDisplay.code, 0, noDisplay.stderr);
    assert.match(noDisplay.stderr, /^No browser can be opened here \(no graphical session\): logging in with a code instead/);
    const noCommand = await deviceLogin(svc, { ...env, BROWSER: join(m.home, 'no-such-browser') }, stack.idp, 'bob@example.com', []);
    keep('nocommand.txt', noCommand.stdout + noCommand.stderr);
    assert.equal(noCommand.code, 0, noCommand.stderr);
    assert.match(noCommand.stderr, /The browser could not be started: logging in with a code instead/);
    assert.equal(openedCount(), seen, 'the browser script was not run');
    assert.equal(stored()?.developer, 'bob@example.com');
    collectLogin();
    const both = await broker(['login', '--device', '--remote'], env);
    assert.equal(both.code, EXIT_CODES.invalid_request);
    assert.match(both.stderr, /--device and --remote cannot be used together/);
  });

  it('nothing secret printed or on disk: no code, PKCE verifier, refresh token, device key or ID token in the CLI\'s output, the pages, the test HOME (the CLI\'s TMPDIR with it) or the service\'s files', () => {
    secrets.push(...stack.idp.codeVerifiers);
    assert.ok(stack.idp.codeVerifiers.length >= 2, 'the verifiers of the logins');
    assert.ok(secrets.length >= 8, `${secrets.length} secrets`);
    // The CLI's TMPDIR is inside the test HOME. (Chromium's own profile keeps the addresses it
    // visited, the codes among them: the browser's, not the broker's, and not scanned.)
    const roots = [keptDir, m.home, stack.svc.dir];
    assert.deepEqual(filesContaining(roots, secrets), []);
    assert.deepEqual(filesWithTokensFrom(roots, stack.idp.issuer), [], 'no ID token of the IdP');
    assert.deepEqual(filesWithTokensFrom(roots, svc), [], 'no broker token');
  });
});
