/**
 * The request page in a real browser: Debian's chromium driven headless by playwright-core, against
 * a real `broker server` (test/peers/stack.ts: moto as STS, the real oidc-provider with its login
 * form), logging in through the IdP's own pages. A template needing one approver (group admins),
 * with maxAge 0, so each decision asks the IdP for the password again (prompt=login).
 * People: alice asks (developers), carol approves (admins), bob is neither.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
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
import { TEST_PASSWORD } from './peers/idp.js';
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
  /** Keeps the service's pages (the IdP's own carry its interaction ids, which are not ours). */
  /** The causes of the page's refusals, from the server log. */
  const refusals = (): string[] => stack.svc.log().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; cause?: string })
    .filter((l) => l.msg === 'request page refused').map((l) => String(l.cause));
  const keep = async (p: Page) => {
    if (new URL(p.url()).origin === svc) writeFileSync(join(htmlDir, `${pages++}.html`), await p.content());
  };

  /** A browser context per person (its own cookies), as separate people on their own phones. */
  const as = async (who: string): Promise<Page> => {
    contexts[who] ??= await browser.newContext();
    return contexts[who].newPage();
  };

  /**
   * On the IdP's sign-in page: email and password, then consent when asked; back at the service.
   * The status of the callback (the decision's outcome), and of the page it then goes on to.
   */
  const signIn = async (p: Page, email: string, password = TEST_PASSWORD): Promise<{ callback: number; page: number }> => {
    await p.waitForSelector('form#login');
    await keep(p);
    assert.equal(new URL(p.url()).origin, stack.idp.issuer, 'the login form is the IdP\'s');
    await p.fill('form#login input[name=email]', email);
    await p.fill('form#login input[name=password]', password);
    const callback = p.waitForResponse((r) => r.url().startsWith(`${svc}/requests/callback`));
    const landed = p.waitForResponse((r) => r.url().startsWith(svc) && !r.url().startsWith(`${svc}/requests/callback`) && r.request().isNavigationRequest());
    await p.click('form#login button[type=submit]');
    await p.waitForURL((u) => u.origin === svc || u.pathname.startsWith('/interaction/'));
    if (await p.locator('form#consent').count()) {
      await keep(p);
      await p.click('form#consent button[type=submit]');
    }
    const status = (await callback).status();
    let page = status;
    if (status === 200) {
      // After a login: a same-origin hop (meta refresh) onto the page it was for.
      page = (await landed).status();
      await p.waitForURL((u) => u.origin === svc && u.pathname !== '/requests/callback', { waitUntil: 'load' });
    } else {
      landed.catch(() => undefined);
      await p.waitForURL((u) => u.origin === svc, { waitUntil: 'load' });
    }
    await keep(p);
    return { callback: status, page };
  };

  /** Opens a request's page, signing in first if this person's web session has none. */
  const open = async (p: Page, who: string, id: string): Promise<number> => {
    const res = await p.goto(`${svc}/requests/${id}`);
    if (new URL(p.url()).origin === stack.idp.issuer) return (await signIn(p, `${who}@example.com`)).page;
    await keep(p);
    return res!.status();
  };

  /** Clicks a decision button; the IdP asks for the password again (maxAge 0); the outcome page's status. */
  const decide = async (p: Page, who: string, button: 'confirm' | 'approve' | 'deny', reason = ''): Promise<number> => {
    await p.fill('#reason', reason);
    await p.click(`button.${button}`);
    return (await signIn(p, `${who}@example.com`)).callback;
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

  /**
   * The next authorization request of `ctx`, as the service's redirect sends it to the IdP, changed
   * on its way by `change` (a route sees the first request of a redirect chain only: /requests/login).
   */
  const rewriteAuthorization = async (ctx: BrowserContext, change: (u: URL) => void) => {
    await ctx.route((u) => u.origin === svc && u.pathname === '/requests/login', async (route) => {
      const res = await route.fetch({ maxRedirects: 0 });
      const to = new URL(res.headers().location!);
      change(to);
      await route.fulfill({ response: res, headers: { ...res.headers(), location: to.href } });
    });
  };

  it('nonce: an ID token issued for another nonce is refused (the authorization request rewritten on its way to the IdP)', async () => {
    const ctx = await browser.newContext();
    let sent = '';
    await rewriteAuthorization(ctx, (u) => {
      sent = u.searchParams.get('nonce') ?? '';
      if (sent) u.searchParams.set('nonce', 'nonce-of-another-login');
    });
    const p = await ctx.newPage();
    await p.goto(`${svc}/requests/login?next=/requests`);
    assert.match(sent, /^[A-Za-z0-9_-]{43}$/, 'each login sends a nonce of its own (256 bits)');
    assert.equal((await signIn(p, 'carol@example.com')).callback, 401);
    assert.match(await p.locator('#error').innerText(), /the IdP login could not be verified/);
    assert.match(refusals().at(-1) ?? '', /claim nonce/, 'the cause in the server log');
    const list = await ctx.request.get(`${svc}/requests`, { maxRedirects: 0 });
    assert.equal(list.status(), 303);
    assert.equal(list.headers().location, '/requests/login?next=%2Frequests', 'not signed in');
    await ctx.close();
  });

  it('PKCE: a code issued for another code_challenge is not redeemed with this login\'s verifier', async () => {
    const ctx = await browser.newContext();
    // Someone else's challenge (as an attacker who started the login would hold the verifier of).
    const theirs = createHash('sha256').update('verifier-of-someone-else-'.padEnd(64, 'x')).digest('base64url');
    let sent = '';
    await rewriteAuthorization(ctx, (u) => {
      sent = u.searchParams.get('code_challenge_method') ?? '';
      u.searchParams.set('code_challenge', theirs);
    });
    const p = await ctx.newPage();
    await p.goto(`${svc}/requests/login?next=/requests`);
    assert.equal(sent, 'S256', 'the service asks for S256 (RFC 7636 §4.2)');
    assert.equal((await signIn(p, 'carol@example.com')).callback, 401);
    assert.match(refusals().at(-1) ?? '', /IdP: invalid_grant/, 'the IdP refused the exchange');
    await ctx.close();
  });

  it('state: a callback with another state is refused; a login flow answers one callback only', async () => {
    const ctx = await browser.newContext();
    let state = '';
    await rewriteAuthorization(ctx, (u) => { state = u.searchParams.get('state') ?? ''; });
    const p = await ctx.newPage();
    await p.goto(`${svc}/requests/login?next=/requests`);
    await p.waitForSelector('form#login');
    secrets.push(state);
    // `iss` as the IdP sends it (RFC 9207 §2; openid-client checks it first).
    const iss = `&iss=${encodeURIComponent(stack.idp.issuer)}`;
    const wrong = await p.goto(`${svc}/requests/callback?code=some-code&state=state-of-another-browser${iss}`);
    assert.equal(wrong!.status(), 401, 'the state does not match this browser\'s login');
    assert.match(refusals().at(-1) ?? '', /state/, 'refused for its state, before the code is tried');
    const again = await p.goto(`${svc}/requests/callback?code=some-code&state=${encodeURIComponent(state)}${iss}`);
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
    for (const ctx of Object.values(contexts)) secrets.push(...(await ctx.cookies(svc)).map((c) => c.value));
    assert.deepEqual(filesContaining([htmlDir], secrets), [], 'no secret in the HTML');
    assert.deepEqual(filesWithTokensFrom([htmlDir], stack.idp.issuer), [], 'no ID token of the IdP in the HTML');
    assert.deepEqual(filesContaining([stack.svc.dir], secrets), [], 'no secret in the service\'s files');
  });
});
