/**
 * `broker login` in the browser: the OAuth 2.0 authorization code grant (RFC 6749 §4.1) for a native
 * app (RFC 8252), with PKCE S256 (RFC 7636 §4.2), a `state` (RFC 6749 §10.12) and a `nonce` bound to
 * the ID token (OIDC Core §3.1.2.1). The code comes back either to a loopback listener of ours
 * (RFC 8252 §7.3: `http://127.0.0.1:<ephemeral port>/callback`; the IdP must allow any port), or,
 * with `--remote`, pasted by the person from the address bar of a browser on another machine.
 * openid-client builds the authorization URL and redeems the code (it checks `iss` (RFC 9207),
 * state, nonce and the ID token); the service then verifies the ID token again, as any other.
 * Neither the code, the verifier nor a token ever appears in a message or on the callback page.
 */
import { timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createInterface } from 'node:readline';
import * as oidc from 'openid-client';
import { BrokerError } from '../errors.js';
import { discoverIdp, idpError } from './device-login.js';

export interface BrowserLoginOptions {
  issuer: string;
  clientId: string;
  scope: string;
  /** Accept an http:// issuer; only on a loopback address (a local test IdP). */
  allowInsecureHttp?: boolean;
  /** How long to wait for the browser (or the paste); default 5 min. */
  timeoutMs?: number;
}

/** The path of the redirect URI the broker CLI's client registers at the IdP (any port). */
export const CALLBACK_PATH = '/callback';
export const DEFAULT_LOGIN_TIMEOUT_MS = 5 * 60_000;

/** One authorization request's secrets; the verifier never leaves this process. */
interface Flow { state: string; nonce: string; codeVerifier: string; redirectUri: string }

async function authorizationUrl(config: oidc.Configuration, scope: string, flow: Flow): Promise<string> {
  const meta = config.serverMetadata();
  if (!meta.authorization_endpoint) {
    throw new BrokerError('upstream_error', 'the identity provider offers no authorization endpoint', { hint: 'log in with --device, or ask the IdP admin' });
  }
  // RFC 8414 §2: an IdP that lists its PKCE methods must list S256; one that lists none is tried.
  const methods = meta.code_challenge_methods_supported;
  if (Array.isArray(methods) && !methods.includes('S256')) {
    throw new BrokerError('upstream_error', 'the identity provider does not support PKCE with S256', { hint: 'log in with --device, or ask the IdP admin to enable PKCE (RFC 7636)' });
  }
  return oidc.buildAuthorizationUrl(config, {
    redirect_uri: flow.redirectUri, scope, response_type: 'code', state: flow.state, nonce: flow.nonce,
    code_challenge: await oidc.calculatePKCECodeChallenge(flow.codeVerifier), code_challenge_method: 'S256',
  }).href;
}

function newFlow(redirectUri: string): Flow {
  return { state: oidc.randomState(), nonce: oidc.randomNonce(), codeVerifier: oidc.randomPKCECodeVerifier(), redirectUri };
}

function sameString(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * Checks an authorization response (the callback's query) and redeems its code. Our own checks
 * come first, so each failure gets its own message: the IdP's error (RFC 6749 §4.1.2.1), the state,
 * the code; then openid-client's (iss, state again, the code exchange with the verifier, nonce).
 */
async function finish(config: oidc.Configuration, opts: BrowserLoginOptions, flow: Flow, params: URLSearchParams): Promise<string> {
  const error = params.get('error');
  if (error !== null) throw callbackError(error, opts.issuer);
  const state = params.get('state');
  if (state !== null && !sameString(state, flow.state)) {
    throw new BrokerError('unauthenticated', 'the login answer is not for this login (its state does not match)', {
      hint: 'run broker login again, and finish it in the browser it opens; an answer from another login is never taken',
    });
  }
  if (!params.get('code')) {
    throw new BrokerError('unauthenticated', 'the login answer holds no authorization code', { hint: 'run broker login again' });
  }
  const current = new URL(flow.redirectUri);
  for (const [k, v] of params) current.searchParams.append(k, v);
  // A bare code pasted with --remote has no state or iss: ours are added. PKCE still binds the code
  // to this login's verifier (RFC 7636 §1), and the nonce its ID token.
  if (state === null) current.searchParams.set('state', flow.state);
  if (!params.has('iss') && config.serverMetadata().authorization_response_iss_parameter_supported) current.searchParams.set('iss', config.serverMetadata().issuer);
  let tokens: oidc.TokenEndpointResponse;
  try {
    tokens = await oidc.authorizationCodeGrant(config, current, {
      pkceCodeVerifier: flow.codeVerifier, expectedState: flow.state, expectedNonce: flow.nonce, idTokenExpected: true,
    });
  } catch (e) {
    if (e instanceof oidc.ResponseBodyError && e.error === 'invalid_grant') {
      throw new BrokerError('unauthenticated', 'the identity provider did not accept the authorization code (expired, used, or from another login)', { hint: 'run broker login again' });
    }
    const claim = failedClaim(e);
    if (claim !== undefined) {
      throw new BrokerError('unauthenticated', `the identity provider's ID token failed the check of its ${claim} claim`, { hint: 'run broker login again' });
    }
    throw idpError(e, opts.issuer, 'code exchange');
  }
  if (typeof tokens.id_token !== 'string' || tokens.id_token.length === 0) {
    throw new BrokerError('upstream_error', `the identity provider ${opts.issuer} returned no ID token`, {
      hint: `the login scope must include "openid" (it is "${opts.scope}"); check oidc.scopes in the broker service config`,
    });
  }
  return tokens.id_token;
}

/** The ID token claim a check failed on (nonce, iss, aud…), where openid-client's error chain names one. */
function failedClaim(e: unknown): string | undefined {
  for (let c: unknown = e, depth = 0; c && typeof c === 'object' && depth < 4; c = (c as { cause?: unknown }).cause, depth++) {
    const claim = (c as { claim?: unknown }).claim;
    if (typeof claim === 'string' && /^[a-z_]{1,32}$/.test(claim)) return claim;
  }
  return undefined;
}

/** The IdP's refusal in the redirect (RFC 6749 §4.1.2.1); its code quoted only when it is one. */
function callbackError(error: string, issuer: string): BrokerError {
  if (error === 'access_denied') {
    return new BrokerError('forbidden', 'the login was denied at the identity provider', {
      hint: 'run broker login again and allow the request; if you did, ask your IdP admin whether you may use the broker CLI',
    });
  }
  const code = /^[a-z_]{1,64}$/.test(error) ? error : 'an error';
  return new BrokerError('upstream_error', `the identity provider ${issuer} answered the login with ${code}`, {
    hint: 'the broker service\'s oidc.cliClientId must name a public native client with the redirect URI http://127.0.0.1/callback (any port) at the IdP',
  });
}

/** What the browser is shown at the end: done or failed, nothing of the answer (no code, no token). */
function resultPage(res: ServerResponse, status: number, ok: boolean, text: string): void {
  const title = ok ? 'Login done' : 'Login failed';
  const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'referrer-policy': 'no-referrer',
    'content-security-policy': "default-src 'none'", 'x-content-type-options': 'nosniff',
  });
  res.end(`<!DOCTYPE html><html><head><meta charset="utf-8"><title>broker: ${title}</title></head><body>`
    + `<h1 id="${ok ? 'login-done' : 'login-failed'}">${title}</h1><p>${esc(text)}</p></body></html>`);
}

export interface LoopbackLogin {
  /** The authorization URL to open in the browser. */
  url: string;
  /** The ID token, once the browser came back; rejects with a BrokerError. The listener is closed either way. */
  result: Promise<{ idToken: string }>;
  /** Stops waiting (the listener closes); `result` then rejects. */
  close(): void;
}

/**
 * Starts a loopback login: a listener on 127.0.0.1 at a port the OS picks (RFC 8252 §7.3, the
 * literal address, not `localhost`, §8.3), and the authorization URL that sends the browser back to
 * it. The first request to the callback path ends the login, succeeded or not, as does the timeout;
 * the listener is then closed.
 */
export async function startLoopbackLogin(opts: BrowserLoginOptions): Promise<LoopbackLogin> {
  const config = await discoverIdp(opts);
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new BrokerError('internal', `cannot listen on 127.0.0.1 for the login's redirect (${(e as NodeJS.ErrnoException).code ?? 'error'})`, { hint: 'log in with --device or --remote' })));
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const flow = newFlow(`http://127.0.0.1:${(server.address() as AddressInfo).port}${CALLBACK_PATH}`);
  let url: string;
  try {
    url = await authorizationUrl(config, opts.scope, flow);
  } catch (e) {
    await closeServer(server);
    throw e;
  }

  let settle!: (r: { idToken: string } | BrokerError) => void;
  const settled = new Promise<{ idToken: string } | BrokerError>((r) => { settle = r; });
  let done = false;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_LOGIN_TIMEOUT_MS;
  const timer = setTimeout(() => {
    done = true;
    settle(new BrokerError('unauthenticated', `the browser did not come back within ${Math.round(timeoutMs / 60_000) || 1} min`, {
      hint: 'run broker login again; where this machine\'s browser cannot reach it, use --remote or --device',
    }));
  }, timeoutMs);
  timer.unref();

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const u = new URL(req.url ?? '/', 'http://127.0.0.1');
    if (req.method !== 'GET' || u.pathname !== CALLBACK_PATH) { res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n'); return; }
    if (done) { resultPage(res, 410, false, 'This login has already ended; run broker login again.'); return; }
    done = true;
    finish(config, opts, flow, u.searchParams).then((idToken) => {
      resultPage(res, 200, true, 'You are logged in to the broker. You can close this tab and go back to the terminal.');
      settle({ idToken });
    }, (e: unknown) => {
      const err = e instanceof BrokerError ? e : new BrokerError('internal', 'the login could not be finished');
      resultPage(res, err.code === 'forbidden' ? 403 : err.status >= 500 ? 502 : 400, false, `${err.message}. Go back to the terminal.`);
      settle(err);
    });
  });

  const result = settled.then(async (r) => {
    clearTimeout(timer);
    await closeServer(server);
    if (r instanceof BrokerError) throw r;
    return r;
  });
  result.catch(() => undefined); // the caller awaits it; never an unhandled rejection before then
  return {
    url, result,
    close: () => {
      if (done) return;
      done = true;
      settle(new BrokerError('unauthenticated', 'the login was cancelled'));
    },
  };
}

async function closeServer(server: Server): Promise<void> {
  server.closeIdleConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeAllConnections();
}

/**
 * `broker login --remote` (SSH sessions): the redirect URI is a loopback address on a port nothing
 * here listens on, so the person's own browser, after the login, fails to load it and they copy the
 * whole URL from its address bar (or just its `code`) and paste it here. The same PKCE, state and
 * nonce as the loopback login; the port is random, so that the code is unlikely to reach a server
 * of the person's machine (and useless without the verifier if it does).
 */
export async function remoteLogin(opts: BrowserLoginOptions & {
  /** Show the URL and what to paste (stderr). */
  onUrl(url: string, redirectUri: string): void;
  input?: NodeJS.ReadableStream;
}): Promise<{ idToken: string }> {
  const config = await discoverIdp(opts);
  const port = 49152 + Math.floor(Math.random() * 16384); // IANA dynamic ports (RFC 6335 §6)
  const flow = newFlow(`http://127.0.0.1:${port}${CALLBACK_PATH}`);
  opts.onUrl(await authorizationUrl(config, opts.scope, flow), flow.redirectUri);
  const pasted = await readLine(opts.input ?? process.stdin, opts.timeoutMs ?? DEFAULT_LOGIN_TIMEOUT_MS);
  return { idToken: await finish(config, opts, flow, pastedParams(pasted, flow.redirectUri)) };
}

/** The pasted redirect URL's query, or a bare code; anything else is refused without being echoed. */
export function pastedParams(pasted: string, redirectUri: string): URLSearchParams {
  const text = pasted.trim();
  if (text === '') throw new BrokerError('invalid_request', 'nothing was pasted', { hint: 'paste the whole address the browser shows after the login (it starts with http://127.0.0.1:)' });
  if (/^https?:\/\//i.test(text)) {
    const u = URL.parse(text);
    const expected = new URL(redirectUri);
    if (!u || u.origin !== expected.origin || u.pathname !== expected.pathname) {
      throw new BrokerError('invalid_request', 'the pasted address is not this login\'s redirect', {
        hint: `paste the address the browser shows after the login, which starts with ${redirectUri}?`,
      });
    }
    return u.searchParams;
  }
  // RFC 6749 §A.11: a code is VSCHAR; whitespace inside means it is something else.
  if (!/^[\x21-\x7e]{1,2048}$/.test(text)) {
    throw new BrokerError('invalid_request', 'the pasted text is neither the redirect address nor an authorization code', {
      hint: `paste the address the browser shows after the login, which starts with ${redirectUri}?`,
    });
  }
  return new URLSearchParams({ code: text });
}

function readLine(input: NodeJS.ReadableStream, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input, terminal: false });
    const timer = setTimeout(() => {
      rl.close();
      reject(new BrokerError('unauthenticated', `nothing was pasted within ${Math.round(timeoutMs / 60_000) || 1} min`, { hint: 'run broker login --remote again' }));
    }, timeoutMs);
    let got = false;
    rl.once('line', (line) => { got = true; clearTimeout(timer); rl.close(); resolve(line); });
    rl.once('close', () => {
      clearTimeout(timer);
      if (!got) reject(new BrokerError('invalid_request', 'the input ended before the redirect address was pasted', { hint: 'run broker login --remote in a terminal, and paste the address there' }));
    });
  });
}
