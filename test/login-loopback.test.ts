/**
 * The CLI's browser login (broker/client/browser-login.ts) against the real oidc-provider, whose
 * login and consent forms the test IdP fills over HTTP (`idp.authorize`, up to its redirect back):
 * the authorization code flow with PKCE S256, state and nonce, to a loopback listener (RFC 8252
 * §7.3) or pasted back (`--remote`). The chromium test of the same flow through the real CLI is
 * test/login-browser.test.ts.
 */
import assert from 'node:assert/strict';
import { Readable, PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { decodeJwt } from 'jose';
import { pastedParams, remoteLogin, startLoopbackLogin, type BrowserLoginOptions } from '../broker/client/browser-login.js';
import { BrokerError, EXIT_CODES, type ErrorCode } from '../broker/errors.js';
import { CLI_CLIENT_ID, LOGIN_SCOPE, startIdp, type TestIdp } from './peers/idp.js';

function isBrokerError(code: ErrorCode, message: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof BrokerError, `expected a BrokerError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, message);
    return true;
  };
}

/** Whether anything still listens at `url`'s origin (asked at another path than the callback's). */
async function listening(url: string): Promise<boolean> {
  try {
    await fetch(new URL('/', url));
    return true;
  } catch {
    return false;
  }
}

describe('browser login (authorization code + PKCE, loopback redirect) against oidc-provider', () => {
  let idp: TestIdp;
  let opts: BrowserLoginOptions;
  before(async () => {
    idp = await startIdp();
    opts = { issuer: idp.issuer, clientId: CLI_CLIENT_ID, scope: LOGIN_SCOPE, allowInsecureHttp: true };
  });
  after(async () => { await idp?.stop(); });

  it('the authorization URL asks for a code with PKCE S256, a state and a nonce of 256 bits, to 127.0.0.1 on the listener\'s port', async () => {
    const login = await startLoopbackLogin(opts);
    const u = new URL(login.url);
    assert.equal(u.origin, idp.issuer);
    const p = u.searchParams;
    assert.equal(p.get('response_type'), 'code');
    assert.equal(p.get('client_id'), CLI_CLIENT_ID);
    assert.equal(p.get('code_challenge_method'), 'S256');
    assert.match(p.get('code_challenge') ?? '', /^[A-Za-z0-9_-]{43}$/);
    assert.match(p.get('state') ?? '', /^[A-Za-z0-9_-]{43}$/);
    assert.match(p.get('nonce') ?? '', /^[A-Za-z0-9_-]{43}$/);
    assert.match(p.get('redirect_uri') ?? '', /^http:\/\/127\.0\.0\.1:\d+\/callback$/);
    assert.ok(await listening(p.get('redirect_uri')!), 'the listener is up');
    login.close();
    await assert.rejects(login.result, isBrokerError('unauthenticated', /cancelled/));
    assert.equal(await listening(p.get('redirect_uri')!), false, 'closed');
  });

  it('logs in: the IdP sends the browser back with a code, redeemed with the verifier; an ID token for the CLI client with the nonce; the page says done and holds no token; the listener closes', async () => {
    const login = await startLoopbackLogin(opts);
    const sent = new URL(login.url).searchParams;
    const back = await idp.authorize(login.url, 'alice@example.com');
    assert.ok(back.startsWith(`${sent.get('redirect_uri')}?`), back);
    const code = new URL(back).searchParams.get('code')!;
    const res = await fetch(back);
    const html = await res.text();
    assert.equal(res.status, 200);
    assert.match(html, /id="login-done"/);
    assert.equal(res.headers.get('cache-control'), 'no-store');
    const { idToken } = await login.result;
    const claims = decodeJwt(idToken);
    assert.equal(claims.aud, CLI_CLIENT_ID);
    assert.equal(claims.email, 'alice@example.com');
    assert.equal(claims.nonce, sent.get('nonce'));
    for (const secret of [idToken, code]) assert.ok(!html.includes(secret), 'no token or code on the page');
    assert.equal(await listening(back), false, 'the listener closed after the callback');
  });

  it('a callback with another state is refused (exit 4) and ends the login; the code is never redeemed', async () => {
    const login = await startLoopbackLogin(opts);
    const back = new URL(await idp.authorize(login.url, 'alice@example.com'));
    back.searchParams.set('state', 'state-of-another-login');
    const res = await fetch(back);
    assert.equal(res.status, 400);
    assert.match(await res.text(), /id="login-failed"[\s\S]*its state does not match/);
    await assert.rejects(login.result, isBrokerError('unauthenticated', /not for this login \(its state does not match\)/));
    assert.equal(await listening(back.href), false);
  });

  it('a callback without a code is refused; a request to another path is a 404 that does not end the login', async () => {
    const login = await startLoopbackLogin(opts);
    const redirect = new URL(new URL(login.url).searchParams.get('redirect_uri')!);
    assert.equal((await fetch(new URL('/favicon.ico', redirect))).status, 404);
    const state = new URL(login.url).searchParams.get('state')!;
    const res = await fetch(`${redirect.href}?state=${state}&iss=${encodeURIComponent(idp.issuer)}`);
    assert.equal(res.status, 400);
    await assert.rejects(login.result, isBrokerError('unauthenticated', /holds no authorization code/));
  });

  it('access_denied from the IdP (the person cancels) is refused as forbidden (exit 5)', async () => {
    const login = await startLoopbackLogin(opts);
    const back = await idp.authorize(login.url, 'alice@example.com', { abort: true });
    assert.equal(new URL(back).searchParams.get('error'), 'access_denied');
    const res = await fetch(back);
    assert.equal(res.status, 403);
    assert.match(await res.text(), /id="login-failed"[\s\S]*denied at the identity provider/);
    await assert.rejects(login.result, isBrokerError('forbidden', /the login was denied at the identity provider/));
    assert.equal(await login.result.catch((e: BrokerError) => e.exitCode), EXIT_CODES.forbidden);
  });

  it('another IdP error in the callback is an upstream error naming its code, never echoing other text', async () => {
    const login = await startLoopbackLogin(opts);
    const redirect = new URL(login.url).searchParams.get('redirect_uri')!;
    await fetch(`${redirect}?error=unauthorized_client&error_description=${encodeURIComponent('<script>x</script>')}`);
    await assert.rejects(login.result, isBrokerError('upstream_error', /answered the login with unauthorized_client$/));
  });

  it('times out: the listener closes and the login fails with a clear error', async () => {
    const login = await startLoopbackLogin({ ...opts, timeoutMs: 300 });
    const redirect = new URL(login.url).searchParams.get('redirect_uri')!;
    await assert.rejects(login.result, isBrokerError('unauthenticated', /the browser did not come back within 1 min/));
    assert.equal(await listening(redirect), false);
  });

  it('a code issued for another login is not redeemed with this one\'s verifier (PKCE), even with this login\'s state', async () => {
    const other = await startLoopbackLogin(opts);
    const theirs = new URL(await idp.authorize(other.url, 'bob@example.com'));
    other.close();
    await other.result.catch(() => undefined);
    const login = await startLoopbackLogin(opts);
    const mine = new URL(login.url).searchParams;
    const forged = new URL(mine.get('redirect_uri')!);
    forged.search = new URLSearchParams({ code: theirs.searchParams.get('code')!, state: mine.get('state')!, iss: idp.issuer }).toString();
    await fetch(forged);
    await assert.rejects(login.result, isBrokerError('unauthenticated', /did not accept the authorization code/));
  });

  it('an ID token issued for another nonce is refused (the authorization URL rewritten on its way to the IdP)', async () => {
    const login = await startLoopbackLogin(opts);
    const u = new URL(login.url);
    u.searchParams.set('nonce', 'nonce-of-another-login');
    await fetch(await idp.authorize(u.href, 'alice@example.com'));
    await assert.rejects(login.result, isBrokerError('unauthenticated', /ID token failed the check of its nonce claim/));
  });

  describe('--remote: the redirect address pasted back', () => {
    const remote = async (paste: (url: string, redirectUri: string) => Promise<string>, extra: Partial<BrowserLoginOptions> = {}) => {
      const input = new PassThrough();
      let shown: { url: string; redirectUri: string } | undefined;
      const result = remoteLogin({
        ...opts, ...extra, input,
        onUrl: (url, redirectUri) => {
          shown = { url, redirectUri };
          void paste(url, redirectUri).then((line) => input.write(`${line}\n`), (e: unknown) => input.destroy(e as Error));
        },
      });
      return { result, shown: () => shown! };
    };

    it('the whole address bar pasted: logged in, with state and nonce checked; the redirect port is one nothing listens on', async () => {
      const { result, shown } = await remote(async (url) => idp.authorize(url, 'carol@example.com'));
      const { idToken } = await result;
      assert.equal(decodeJwt(idToken).email, 'carol@example.com');
      assert.equal(decodeJwt(idToken).nonce, new URL(shown().url).searchParams.get('nonce'));
      assert.match(shown().redirectUri, /^http:\/\/127\.0\.0\.1:(49\d{3}|5\d{4}|6\d{4})\/callback$/);
    });

    it('the code alone pasted: logged in (PKCE binds it to this login)', async () => {
      const { result } = await remote(async (url) => new URL(await idp.authorize(url, 'alice@example.com')).searchParams.get('code')!);
      assert.equal(decodeJwt((await result).idToken).email, 'alice@example.com');
    });

    it('a pasted address with another state, or access_denied, is refused', async () => {
      const wrong = await remote(async (url) => {
        const back = new URL(await idp.authorize(url, 'alice@example.com'));
        back.searchParams.set('state', 'x'.repeat(43));
        return back.href;
      });
      await assert.rejects(wrong.result, isBrokerError('unauthenticated', /state does not match/));
      const denied = await remote(async (url) => idp.authorize(url, 'alice@example.com', { abort: true }));
      await assert.rejects(denied.result, isBrokerError('forbidden', /denied at the identity provider/));
    });

    it('what is pasted is checked without being echoed: another address, text with spaces, nothing; the input ending early', () => {
      const r = 'http://127.0.0.1:50000/callback';
      assert.throws(() => pastedParams('https://evil.example/callback?code=secret-code-1', r), (e: unknown) => {
        assert.ok(isBrokerError('invalid_request', /not this login's redirect/)(e));
        assert.ok(!JSON.stringify((e as BrokerError).toJSON()).includes('secret-code-1'));
        return true;
      });
      assert.throws(() => pastedParams('http://127.0.0.1:50001/callback?code=x', r), isBrokerError('invalid_request', /not this login's redirect/));
      assert.throws(() => pastedParams('my secret words', r), isBrokerError('invalid_request', /neither the redirect address nor an authorization code/));
      assert.throws(() => pastedParams('  \n', r), isBrokerError('invalid_request', /nothing was pasted/));
      assert.equal(pastedParams(`${r}?code=abc&state=s`, r).get('code'), 'abc');
    });

    it('the input ending before a paste is a clear error', async () => {
      await assert.rejects(remoteLogin({ ...opts, input: Readable.from([]), onUrl: () => undefined }), isBrokerError('invalid_request', /input ended before/));
    });
  });
});
