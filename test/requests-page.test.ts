/**
 * The request page in a real browser: Debian's chromium driven headless by playwright-core, against
 * a real `broker server` (test/peers/stack.ts: moto as STS, the real oidc-provider with its login
 * form), logging in through the IdP's own pages. A template needing one approver (group admins),
 * with maxAge 0, so each decision asks the IdP for the password again (prompt=login).
 * People: alice asks (developers), carol approves (admins), bob is neither.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { parse, stringify } from 'yaml';
import { cookiesSecure } from '../broker/server/start.js';
import { safeNext } from '../broker/server/web/index.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import type { AuditRecord } from '../broker/store/audit-event.js';
import { TEST_PASSWORD, WEB_CLIENT_ID } from './peers/idp.js';
import { POLICIES_DIR, REPO_ROOT } from './peers/paths.js';
import { filesContaining, filesWithTokensFrom } from './peers/secret-scan.js';
import { startStack, type Stack } from './peers/stack.js';

const CHROMIUM = '/usr/bin/chromium';
const OUTPUT = join(REPO_ROOT, 'test-output');

/** deploy-lambda, needing carol's group to approve, every decision with a login made for it. */
function policies(): string {
  const dir = join(mkdtempSync(join(tmpdir(), 'broker-page-')), 'policies');
  mkdirSync(dir);
  const t = parse(readFileSync(join(POLICIES_DIR, 'deploy-lambda.yaml'), 'utf8')) as Record<string, unknown>;
  t.name = 'deploy-approved';
  t.confirm = { mode: 'approvers', approvers: { groups: ['admins'] }, approvals: 1, maxAge: 0 };
  writeFileSync(join(dir, 'deploy-approved.yaml'), stringify(t));
  return dir;
}

type Res = { status: number; body: any; text: string };

describe('the request page in chromium (login at the IdP, confirm, approve, deny)', () => {
  let stack: Stack;
  let browser: Browser;
  let svc: string;
  const tokens: Record<string, string> = {};
  /** Every page's HTML as the browser got it, and every secret seen on the way: scanned at the end. */
  const htmlDir = mkdtempSync(join(tmpdir(), 'broker-page-html-'));
  const secrets: string[] = [];
  let pages = 0;
  const contexts: Record<string, BrowserContext> = {};

  const call = async (method: string, path: string, token?: string, body?: unknown): Promise<Res> => {
    const res = await fetch(`${svc}${path}`, {
      method, headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined, text };
  };
  const audit = async (): Promise<AuditRecord[]> => {
    const s = new SqliteStore(stack.svc.dbPath);
    try { return await s.auditLog.records(0, 100_000); } finally { await s.close(); }
  };
  const request = async (id: string) => (await call('GET', `/v1/requests/${id}`, tokens.alice)).body.request;
  const ask = async (fn: string, reason: string): Promise<string> => {
    const r = await call('POST', '/v1/sessions', tokens.alice, { template: 'deploy-approved', params: { function: fn }, reason, agent: 'claude-code' });
    assert.equal(r.status, 202, r.text);
    return r.body.request.id as string;
  };
  const keep = async (p: Page) => { writeFileSync(join(htmlDir, `${pages++}.html`), await p.content()); };

  /** A browser context per person (its own cookies), as separate people on their own phones. */
  const as = async (who: string): Promise<Page> => {
    contexts[who] ??= await browser.newContext();
    return contexts[who].newPage();
  };

  /** On the IdP's sign-in page: email and password, then consent when asked; back at the service. */
  const signIn = async (p: Page, email: string, password = TEST_PASSWORD): Promise<number> => {
    await p.waitForSelector('form#login');
    await keep(p);
    assert.equal(new URL(p.url()).origin, stack.idp.issuer, 'the login form is the IdP\'s');
    await p.fill('form#login input[name=email]', email);
    await p.fill('form#login input[name=password]', password);
    const callback = p.waitForResponse((r) => r.url().startsWith(`${svc}/requests/callback`));
    await p.click('form#login button[type=submit]');
    await p.waitForURL((u) => u.origin === svc || u.pathname.startsWith('/interaction/'));
    if (await p.locator('form#consent').count()) {
      await keep(p);
      await p.click('form#consent button[type=submit]');
    }
    const status = (await callback).status();
    await p.waitForURL((u) => u.origin === svc);
    // After a login: a same-origin hop (meta refresh) onto the page it was for.
    if (status === 200) await p.waitForURL((u) => !u.pathname.startsWith('/requests/callback'));
    await p.waitForLoadState();
    await keep(p);
    return status;
  };

  /** Opens a request's page, signing in first if this person's web session has none. */
  const open = async (p: Page, who: string, id: string): Promise<number> => {
    const res = await p.goto(`${svc}/requests/${id}`);
    if (new URL(p.url()).origin === stack.idp.issuer) return signIn(p, `${who}@example.com`);
    await keep(p);
    return res!.status();
  };

  /** Clicks a decision button; the IdP asks for the password again (maxAge 0); the outcome page's status. */
  const decide = async (p: Page, who: string, button: 'confirm' | 'approve' | 'deny', reason = ''): Promise<number> => {
    await p.fill('#reason', reason);
    await p.click(`button.${button}`);
    return signIn(p, `${who}@example.com`);
  };

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: install Debian's chromium (bash scripts/setup.sh, or apt-get install chromium)`);
    }
    stack = await startStack({ policiesDir: policies(), extra: { confirm: { default: 'self', maxAge: '5m', timeout: '15m' } } });
    svc = stack.svc.url;
    await stack.idp.registerWebClient([`${svc}/requests/callback`]);
    for (const who of ['alice', 'bob', 'carol']) {
      const r = await call('POST', '/v1/auth/token', undefined, { id_token: await stack.idp.loginAs(`${who}@example.com`) });
      assert.equal(r.status, 200, r.text);
      tokens[who] = r.body.access_token;
    }
    // Root in a container has no user namespace for chromium's sandbox.
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, chromiumSandbox: process.getuid?.() !== 0 });
  });
  after(async () => {
    await browser?.close();
    await stack?.stop();
  });

  let approvedId: string;
  it('an approver signs in at the IdP, sees what is asked and what AWS would enforce, approves; the requester confirms on the page and starts the session', async () => {
    approvedId = await ask('checkout-api', 'fix the timeout');
    const carol = await as('carol');
    assert.equal(await open(carol, 'carol', approvedId), 200);
    const table = await carol.locator('#request').innerText();
    for (const shown of ['alice@example.com', 'deploy-approved', 'function=checkout-api', 'fix the timeout', 'claude-code', 'pending', '1 more approval (group admins)']) {
      assert.ok(table.includes(shown), `the page shows ${shown}:\n${table}`);
    }
    const policy = await carol.locator('#session-policy').innerText();
    assert.match(policy, /arn:aws:lambda:eu-west-1:123456789012:function:checkout-api/, 'the rendered session policy, parameters filled in');
    assert.equal(await carol.locator('button.confirm').count(), 0, 'an approver does not confirm for the requester');
    mkdirSync(OUTPUT, { recursive: true });
    await carol.setViewportSize({ width: 412, height: 915 });
    await carol.screenshot({ path: join(OUTPUT, 'requests-page.png'), fullPage: true });

    const cookies = await contexts.carol!.cookies(svc);
    const session = cookies.find((c) => c.name === 'broker-page');
    assert.ok(session, `the web session cookie: ${cookies.map((c) => c.name).join(', ')}`);
    assert.equal(session.httpOnly, true);
    assert.equal(session.sameSite, 'Strict');
    assert.equal(session.path, '/');
    assert.equal(session.secure, false, 'plain http on loopback: no Secure (cookiesSecure)');
    secrets.push(...cookies.map((c) => c.value));

    assert.equal(await decide(carol, 'carol', 'approve', 'looks right'), 200);
    assert.match(await carol.locator('#request').innerText(), /alice@example\.com to confirm/);
    let r = await request(approvedId);
    assert.equal(r.status, 'pending', 'still waits for the requester\'s own confirmation');
    assert.deepEqual(r.decisions.map((d: any) => [d.decision, d.by, d.reason, d.via]), [['approve', 'carol@example.com', 'looks right', 'page']]);

    const alice = await as('alice');
    assert.equal(await open(alice, 'alice', approvedId), 200);
    assert.equal(await alice.locator('button.approve').count(), 0, 'no Approve button for the requester');
    assert.equal(await decide(alice, 'alice', 'confirm'), 200);
    r = await request(approvedId);
    assert.equal(r.status, 'confirmed');

    const started = await call('POST', '/v1/sessions', tokens.alice, { template: 'deploy-approved', params: { function: 'checkout-api' }, reason: 'fix the timeout', agent: 'claude-code', confirmedRequest: approvedId });
    assert.equal(started.status, 201, started.text);
    assert.match(started.body.credentials.AccessKeyId, /^[A-Z0-9]{16,}$/);
    const rows = (await audit()).filter((a) => a.detail?.request === approvedId);
    assert.ok(rows.some((a) => a.event === 'request.approve' && a.decision === 'approved' && a.detail?.by === 'carol@example.com' && a.detail?.via === 'page'));
    assert.ok(rows.some((a) => a.event === 'session.start' && a.decision === 'allowed'));
    await call('DELETE', `/v1/sessions/${started.body.session.id}`, tokens.alice);
  });

  it('deny with a reason: the request is denied with it, audited; the page shows it', async () => {
    const id = await ask('payments', 'rotate keys');
    const carol = await as('carol');
    assert.equal(await open(carol, 'carol', id), 200);
    assert.equal(await decide(carol, 'carol', 'deny', 'not during the freeze'), 200);
    assert.match(await carol.locator('#request').innerText(), /denied/);
    assert.equal(await carol.locator('form#decide').count(), 0, 'a closed request has no buttons');
    const r = await request(id);
    assert.equal(r.status, 'denied');
    assert.deepEqual(r.decisions.map((d: any) => [d.decision, d.by, d.reason]), [['deny', 'carol@example.com', 'not during the freeze']]);
    const row = (await audit()).find((a) => a.event === 'request.deny' && a.detail?.request === id);
    assert.equal(row?.decision, 'denied');
    assert.equal(row?.reason, 'not during the freeze');
  });

  it('a decision POST without, or with a wrong, CSRF token is refused with 403 and changes nothing', async () => {
    const id = await ask('csrf-target', 'csrf');
    const carol = await as('carol');
    assert.equal(await open(carol, 'carol', id), 200);
    const rowsBefore = (await audit()).length;
    // The browser context's own cookie jar: the web session is live, only the token differs.
    const forms: Record<string, string>[] = [{ decision: 'approve', reason: '' }, { decision: 'approve', reason: '', csrf: 'x'.repeat(43) }];
    for (const form of forms) {
      const res = await contexts.carol!.request.post(`${svc}/requests/${id}/decision`, { form, maxRedirects: 0 });
      assert.equal(res.status(), 403, await res.text());
      assert.match(await res.text(), /this form is not from your page session/);
      assert.equal(res.headers().location, undefined, 'not sent to the IdP');
    }
    // A form with the right token but from a browser without the web session (another site's page
    // posting with the victim's… no cookie: SameSite=Strict) is refused the same way.
    const csrf = await carol.locator('input[name=csrf]').getAttribute('value');
    const bare = await fetch(`${svc}/requests/${id}/decision`, { method: 'POST', body: new URLSearchParams({ decision: 'approve', reason: '', csrf: csrf! }), redirect: 'manual' });
    assert.equal(bare.status, 403);
    assert.equal((await request(id)).decisions.length, 0, 'no decision');
    assert.equal((await audit()).length, rowsBefore, 'nothing audited: nothing happened');
  });

  it('the requester cannot approve their own request, even by posting approve: refused after the IdP login, 403', async () => {
    const id = await ask('own-approval', 'self');
    const alice = await as('alice');
    assert.equal(await open(alice, 'alice', id), 200);
    assert.equal(await alice.locator('button.approve').count(), 0);
    // What a hand-made form would post: the Confirm button turned into approve.
    await alice.locator('button.confirm').evaluate((b) => { (b as unknown as { value: string }).value = 'approve'; });
    assert.equal(await decide(alice, 'alice', 'confirm'), 403);
    assert.match(await alice.locator('#error').innerText(), /alice@example\.com asked for start request .* and cannot approve it/);
    const r = await request(id);
    assert.equal(r.status, 'pending');
    assert.equal(r.decisions.length, 0, 'no approval counted');
    assert.ok((await audit()).some((a) => a.event === 'request.approve' && a.decision === 'denied' && a.detail?.request === id && a.detail?.by === 'alice@example.com'));
  });

  it('a non-approver gets 404, the same as for a request that does not exist', async () => {
    const bob = await as('bob');
    assert.equal(await open(bob, 'bob', approvedId), 404);
    const text = await bob.locator('#error').innerText();
    assert.equal(text, `no start request ${approvedId}`);
    const none = 'req_aaaaaaaaaaaaaaaaaaaaaaaaaa';
    const res = await bob.goto(`${svc}/requests/${none}`);
    assert.equal(res!.status(), 404);
    assert.equal(await bob.locator('#error').innerText(), `no start request ${none}`, 'no oracle');
    const list = await bob.goto(`${svc}/requests`);
    assert.equal(list!.status(), 200);
    assert.equal((await bob.locator('main').innerText()).includes(approvedId), false, 'not listed for him');
  });

  it('the approver\'s list shows what waits for them; the requester\'s shows their own', async () => {
    const id = await ask('listed', 'list me');
    const carol = await as('carol');
    await carol.goto(`${svc}/requests`);
    assert.ok((await carol.locator('main').innerText()).includes('list me'));
    assert.equal(await carol.locator(`a[href="/requests/${id}"]`).count(), 1);
    const alice = await as('alice');
    await alice.goto(`${svc}/requests`);
    assert.equal(await alice.locator(`a[href="/requests/${approvedId}"]`).count(), 1, 'her own, started');
  });

  it('nonce: an ID token issued for another nonce is refused (the authorization request rewritten on its way to the IdP)', async () => {
    const ctx = await browser.newContext();
    await ctx.route(`${stack.idp.issuer}/auth?**`, (route) => {
      const u = new URL(route.request().url());
      u.searchParams.set('nonce', 'nonce-of-another-login');
      return route.continue({ url: u.href });
    });
    const p = await ctx.newPage();
    await p.goto(`${svc}/requests/login?next=/requests`);
    assert.equal(await signIn(p, 'carol@example.com'), 401);
    assert.match(await p.locator('#error').innerText(), /the IdP login could not be verified/);
    assert.match(stack.svc.log(), /"msg":"request page refused".*nonce/, 'the cause in the server log');
    const list = await p.goto(`${svc}/requests`);
    assert.equal(new URL(p.url()).origin, stack.idp.issuer, `not signed in (${list?.status()})`);
    await ctx.close();
  });

  it('PKCE and state: a code taken from the redirect cannot be redeemed without the verifier; a wrong state is refused; a callback is answered once', async () => {
    const ctx = await browser.newContext();
    let callback = '';
    await ctx.route(`${svc}/requests/callback?**`, (route) => { callback = route.request().url(); return route.abort(); });
    const p = await ctx.newPage();
    await p.goto(`${svc}/requests/login?next=/requests`);
    await p.fill('form#login input[name=email]', 'carol@example.com');
    await p.fill('form#login input[name=password]', TEST_PASSWORD);
    await p.click('form#login button[type=submit]').catch(() => undefined);
    for (let i = 0; i < 50 && !callback; i++) {
      if (await p.locator('form#consent').count()) await p.click('form#consent button[type=submit]').catch(() => undefined);
      await new Promise((r) => setTimeout(r, 100));
    }
    const u = new URL(callback);
    const code = u.searchParams.get('code')!;
    assert.ok(code, callback);
    secrets.push(code, u.searchParams.get('state')!);
    const tokenEndpoint = new URL((await (await fetch(`${stack.idp.issuer}/.well-known/openid-configuration`)).json() as { token_endpoint: string }).token_endpoint);
    // Whoever intercepts the code (a log, a Referer, a malicious app on the redirect) has no verifier.
    const stolen = await fetch(tokenEndpoint, { method: 'POST', body: new URLSearchParams({ grant_type: 'authorization_code', code, client_id: WEB_CLIENT_ID, redirect_uri: `${svc}/requests/callback` }) });
    const body = await stolen.json() as { error: string; error_description?: string };
    assert.equal(stolen.status, 400);
    assert.equal(body.error, 'invalid_grant', JSON.stringify(body));
    await ctx.unroute(`${svc}/requests/callback?**`);
    const wrong = new URL(callback);
    wrong.searchParams.set('state', 'state-of-another-browser');
    const w = await p.goto(wrong.href);
    assert.equal(w!.status(), 401, 'the state does not match this browser\'s login');
    const again = await p.goto(callback);
    assert.equal(again!.status(), 400, 'the flow was used up by the first callback');
    assert.match(await p.locator('#error').innerText(), /this login is unknown or has expired/);
    await ctx.close();
  });

  it('bad input renders an HTML error with its status, never a 500: open redirect, malformed ids, a JSON post', async () => {
    const p = await browser.newPage();
    const evil = await p.goto(`${svc}/requests/login?next=${encodeURIComponent('https://evil.example/')}`);
    assert.equal(evil!.status(), 400);
    assert.match(await p.locator('#error').innerText(), /next must be a path of the request page/);
    assert.equal(new URL(p.url()).origin, svc, 'not sent anywhere');
    for (const next of ['//evil.example/requests', '/requests/../v1/whoami', '/requests\\@evil.example']) {
      assert.throws(() => safeNext(next), /next must be a path/);
    }
    const json = await fetch(`${svc}/requests/${approvedId}/decision`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(json.status, 400);
    assert.match(json.headers.get('content-type') ?? '', /text\/html/);
    await p.close();
    const carol = await as('carol');
    const bad = await carol.goto(`${svc}/requests/not-a-request-id`);
    assert.equal(bad!.status(), 404);
    assert.equal(cookiesSecure('https://broker.example.com'), true);
    assert.equal(cookiesSecure('http://127.0.0.1:8080'), false);
  });

  it('no token, code or cookie value in any page\'s HTML, nor in the server log', async () => {
    assert.ok(pages > 10, `${pages} pages kept`);
    for (const ctx of Object.values(contexts)) secrets.push(...(await ctx.cookies()).map((c) => c.value));
    assert.deepEqual(filesContaining([htmlDir], secrets), [], 'no secret in the HTML');
    assert.deepEqual(filesWithTokensFrom([htmlDir], stack.idp.issuer), [], 'no ID token of the IdP in the HTML');
    assert.deepEqual(filesContaining([stack.svc.dir], secrets), [], 'no secret in the service\'s files');
  });
});
