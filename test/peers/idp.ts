/**
 * The test IdP: the real, certified `oidc-provider` (v9) serving real HTTP on 127.0.0.1, in the test
 * process. One public native client, `broker-cli` (`broker login`): the authorization code grant
 * with PKCE to a loopback redirect on any port (RFC 8252 §7.3), and the OAuth 2.0 device
 * authorization grant (RFC 8628); and, once a test registers it with the service's callback URL
 * (`registerWebClient`), the request page's `broker-web`: authorization code, PKCE required (oidc-provider requires it for public
 * clients; `pkce.required` below says so for every client). ID tokens signed RS256 (or ES256)
 * carrying `email`, `email_verified` and `groups`.
 *
 * Scopes and claims: `openid` → sub; `email` → email, email_verified; `profile` → name; `groups` →
 * groups (a scope of its own, as Okta and Keycloak do). The broker asks for "openid email profile
 * groups". Claims go into the ID token itself (`conformIdTokenClaims: false`), since the broker reads
 * only the ID token.
 *
 * The login and consent pages are our own minimal ones (the provider's devInteractions are off): a
 * real form with email and password (every test user's password is TEST_PASSWORD unless it names
 * its own), then consent. `approveDevice` and `authorize` drive them over HTTP as a browser would;
 * the request page's and the CLI login's browser tests drive them in chromium.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import Provider from 'oidc-provider';
import { signIdToken, type IdTokenAlg, type IdTokenSpec, type SigningKey } from './tokens.js';

export interface TestUser {
  email: string;
  groups: string[];
  name?: string;
  /** Default true. */
  emailVerified?: boolean;
  /** Default TEST_PASSWORD. */
  password?: string;
}

export const TEST_PASSWORD = 'correct horse battery staple';

export const DEFAULT_USERS: readonly TestUser[] = [
  { email: 'alice@example.com', name: 'Alice', groups: ['developers'] },
  { email: 'bob@example.com', name: 'Bob', groups: ['contractors'] },
  { email: 'carol@example.com', name: 'Carol', groups: ['developers', 'admins'] },
];

export const CLI_CLIENT_ID = 'broker-cli';
export const WEB_CLIENT_ID = 'broker-web';
export const LOGIN_SCOPE = 'openid email profile groups';
/** The CLI's loopback redirect URI as registered; the CLI adds the port it listens on. */
export const CLI_REDIRECT_URI = 'http://127.0.0.1/callback';

export interface IdpOptions {
  users?: TestUser[];
  /** Algorithm of the client's ID tokens; default RS256. The IdP publishes an RS256 and an ES256 key. */
  idTokenAlg?: IdTokenAlg;
  /** Lifetime of a device code / user code; default 600 s. */
  deviceCodeTtlSeconds?: number;
  /** The polling `interval` the IdP tells clients (RFC 8628 §3.2); default 1 s so tests are quick. */
  pollIntervalSeconds?: number;
}

export interface TestIdp {
  /** e.g. http://127.0.0.1:41234 */
  issuer: string;
  clientId: string;
  users: readonly TestUser[];
  stop(): Promise<void>;
  /**
   * Registers the request page's client (`broker-web`, or `clientId`) with exactly these redirect
   * URIs (the service's callback, known once it listens); public with PKCE, or confidential with
   * `secret` (client_secret_basic), PKCE still required.
   */
  registerWebClient(redirectUris: string[], opts?: { secret?: string; clientId?: string }): Promise<void>;
  /**
   * Approves a pending device login as `email`: enter the code, confirm, log in, consent. With
   * `session`, in that browser: a live IdP session there is reused unless the IdP asks to log in again.
   */
  approveDevice(userCode: string, email: string, session?: IdpSession): Promise<void>;
  /**
   * Follows an authorization URL as a browser would (login form as `email`, consent) up to the
   * IdP's redirect back to the client, and returns that redirect's URL without following it (the
   * code in it is the client's to redeem). With `abort`, cancels at the login form instead.
   */
  authorize(authorizationUrl: string, email: string, opts?: { abort?: boolean }): Promise<string>;
  /** Every PKCE code verifier a client redeemed an authorization code with, in order. */
  readonly codeVerifiers: readonly string[];
  /** A browser of its own (cookies: the IdP session), and how often the IdP had it log in. */
  newSession(): IdpSession;
  /** Refuses a pending device login (the "Abort" button of the confirmation page). */
  denyDevice(userCode: string): Promise<void>;
  /**
   * A genuine ID token for `email`, through a complete device flow approved programmatically. With
   * `overrides`, the same as `issueIdToken(email, overrides)`.
   */
  loginAs(email: string, overrides?: IdTokenOverrides): Promise<string>;
  /**
   * An ID token signed with this IdP's own published key, without a login: for tests that need a
   * correctly signed token with a chosen flaw (wrong audience or issuer, expired, unverified email).
   */
  issueIdToken(email: string, overrides?: IdTokenOverrides): Promise<string>;
}

/** One person's browser at the IdP: `logins` counts the times the IdP showed it the login form. */
export interface IdpSession { readonly browser: unknown; logins: number }

export type IdTokenOverrides = Partial<IdTokenSpec> & {
  alg?: IdTokenAlg;
  /** The JOSE header's `typ` (default JWT): `at+jwt` makes a token shaped like an RFC 9068 access token. */
  typ?: string;
  /** Same as `expSecondsFromNow` (negative: already expired). */
  expiresInSeconds?: number;
};

export async function startIdp(opts: IdpOptions = {}): Promise<TestIdp> {
  const users = opts.users ?? DEFAULT_USERS;
  const userByEmail = (email: string) => users.find((u) => u.email === email);
  const idTokenAlg = opts.idTokenAlg ?? 'RS256';
  const keys = {
    RS256: { kid: `rsa-${randomBytes(4).toString('hex')}`, pair: await generateKeyPair('RS256', { extractable: true }) },
    ES256: { kid: `ec-${randomBytes(4).toString('hex')}`, pair: await generateKeyPair('ES256', { extractable: true }) },
  };
  const jwks: JWK[] = [];
  for (const [alg, k] of Object.entries(keys)) {
    jwks.push({ ...(await exportJWK(k.pair.privateKey)), kid: k.kid, alg, use: 'sig' });
  }

  const Adapter = memoryAdapter();
  // The issuer names the port, so listen first and build the provider once the port is known.
  let provider: Provider | undefined;
  let providerCallback: ((req: IncomingMessage, res: ServerResponse) => void) | undefined;
  const server = createServer((req, res) => {
    if (!provider || !providerCallback) { res.statusCode = 503; res.end(); return; }
    if (req.url?.startsWith('/interaction/')) {
      interaction(provider, users, req, res).catch((e: unknown) => {
        res.statusCode = 500;
        res.setHeader('content-type', 'text/html; charset=utf-8');
        res.end(page('Error', `<p class="error">${esc((e as Error).message)}</p>`));
      });
    } else {
      providerCallback(req, res);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  provider = new Provider(issuer, {
    clients: [{
      client_id: CLI_CLIENT_ID,
      client_name: 'Agent credential broker CLI',
      token_endpoint_auth_method: 'none',
      // A native app (RFC 8252): authorization code + PKCE to a loopback redirect, where
      // oidc-provider allows any port for a registered http://127.0.0.1 URI of a native client
      // (RFC 8252 §7.3; lib/models/client.js, stripLoopbackPort); and the device flow.
      application_type: 'native',
      grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      redirect_uris: [CLI_REDIRECT_URI],
      id_token_signed_response_alg: idTokenAlg,
    }],
    jwks: { keys: jwks },
    adapter: Adapter,
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    // auth_time, sid, acr, iss: oidc-provider's own defaults, kept (a confirmation checks auth_time, OIDC Core §2).
    claims: { auth_time: null, sid: null, acr: null, iss: null, openid: ['sub', 'jti'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
    scopes: ['openid', 'email', 'profile', 'groups'],
    conformIdTokenClaims: false,
    async findAccount(_ctx: unknown, id: string) {
      const user = userByEmail(id);
      if (!user) return undefined;
      return {
        accountId: id,
        async claims() {
          // A `jti` per ID token, as Okta, Entra ID (`uti`) and Keycloak send one: oidc-provider issues
          // none, so two logins of one user in one second would otherwise get the very same token.
          return { sub: user.email, email: user.email, email_verified: user.emailVerified ?? true, name: user.name ?? user.email, groups: user.groups, jti: randomUUID() };
        },
      };
    },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true, userCodeInputSource, userCodeConfirmSource, successSource },
    },
    // RFC 7636 for every authorization-code client, confidential ones too (RFC 9700 §2.1.1).
    pkce: { required: () => true },
    interactions: { url: (_ctx: unknown, i: { uid: string }) => `/interaction/${i.uid}` },
    ttl: {
      AccessToken: 600, ClientCredentials: 600, IdToken: 600, RefreshToken: 3600, Grant: 3600,
      Interaction: 600, Session: 3600, DeviceCode: opts.deviceCodeTtlSeconds ?? 600,
    },
    clientBasedCORS: () => false,
    renderError(ctx: { type: string; body: string }, out: Record<string, unknown>) {
      ctx.type = 'html';
      ctx.body = page('Error', `<p class="error">${esc(String(out.error))}: ${esc(String(out.error_description ?? ''))}</p>`);
    },
  });
  // RFC 8628 §3.2: the IdP may name the polling interval (clients default to 5 s without it).
  const interval = opts.pollIntervalSeconds ?? 1;
  provider.on('device_authorization.success', (_ctx: unknown, body: Record<string, unknown>) => { body.interval = interval; });
  // The PKCE verifiers clients redeemed codes with (RFC 7636 §4.5), for tests that look for them
  // where they must not be.
  const codeVerifiers: string[] = [];
  provider.on('grant.success', (ctx: { oidc: { params?: Record<string, unknown> } }) => {
    const v = ctx.oidc.params?.code_verifier;
    if (typeof v === 'string') codeVerifiers.push(v);
  });
  providerCallback = provider.callback();

  const discovery = async () => {
    const res = await fetch(`${issuer}/.well-known/openid-configuration`);
    return (await res.json()) as { device_authorization_endpoint: string; token_endpoint: string };
  };

  const approveDevice = async (userCode: string, email: string, session?: IdpSession): Promise<void> => {
    const b = (session?.browser as Browser | undefined) ?? new Browser();
    let p = await b.confirmPage(issuer, userCode);
    p = await b.submit(p, 'op.deviceConfirmForm', {});
    for (let step = 0; step < 4; step++) {
      if (p.html.includes('id="device-success"')) return;
      if (hasForm(p.html, 'login')) {
        if (session) session.logins++;
        p = await b.submit(p, 'login', { email, password: userByEmail(email)?.password ?? TEST_PASSWORD });
        if (hasForm(p.html, 'login')) throw new Error(`test IdP: login as ${email} refused: ${errorText(p.html)}`);
      } else if (hasForm(p.html, 'consent')) {
        p = await b.submit(p, 'consent', {});
      } else {
        throw new Error(`test IdP: device approval stopped at ${p.url} (${p.status}): ${errorText(p.html)}`);
      }
    }
    throw new Error('test IdP: device approval did not finish');
  };

  const authorize = async (authorizationUrl: string, email: string, { abort = false } = {}): Promise<string> => {
    const b = new Browser();
    let p = await b.go(authorizationUrl, (location) => !location.startsWith(issuer));
    for (let step = 0; step < 4; step++) {
      if (p.status >= 300 && p.status < 400) return p.url;
      if (hasForm(p.html, 'login')) {
        p = abort
          ? await b.submit(p, 'abort', {}, (location) => !location.startsWith(issuer))
          : await b.submit(p, 'login', { email, password: userByEmail(email)?.password ?? TEST_PASSWORD }, (location) => !location.startsWith(issuer));
      } else if (hasForm(p.html, 'consent')) {
        p = await b.submit(p, 'consent', {}, (location) => !location.startsWith(issuer));
      } else {
        throw new Error(`test IdP: authorization stopped at ${p.url} (${p.status}): ${errorText(p.html)}`);
      }
    }
    throw new Error('test IdP: authorization did not finish');
  };

  const denyDevice = async (userCode: string): Promise<void> => {
    const b = new Browser();
    const p = await b.confirmPage(issuer, userCode);
    const after = await b.submit(p, 'op.deviceConfirmForm', { abort: 'yes' });
    if (!/interrupted/i.test(errorText(after.html))) throw new Error(`test IdP: abort not acknowledged: ${errorText(after.html)}`);
  };

  // Clients not in the static list are read from the adapter (oidc-provider's dynamic clients), so
  // one can be added once the redirect URI is known.
  const registerWebClient = async (redirectUris: string[], { secret, clientId = WEB_CLIENT_ID }: { secret?: string; clientId?: string } = {}): Promise<void> => {
    await new Adapter('Client').upsert(clientId, {
      client_id: clientId, client_name: 'Agent credential broker request page',
      grant_types: ['authorization_code'], response_types: ['code'], redirect_uris: redirectUris,
      id_token_signed_response_alg: idTokenAlg,
      ...(secret ? { client_secret: secret, token_endpoint_auth_method: 'client_secret_basic' } : { token_endpoint_auth_method: 'none' }),
    });
  };

  const loginAs = async (email: string, overrides?: IdTokenOverrides): Promise<string> => {
    if (overrides) return issueIdToken(email, overrides);
    const d = await discovery();
    const post = async (url: string, form: Record<string, string>) => {
      const res = await fetch(url, { method: 'POST', body: new URLSearchParams(form) });
      return { status: res.status, body: (await res.json()) as Record<string, unknown> };
    };
    const da = await post(d.device_authorization_endpoint, { client_id: CLI_CLIENT_ID, scope: LOGIN_SCOPE });
    if (da.status !== 200) throw new Error(`test IdP: device authorization failed: ${JSON.stringify(da.body)}`);
    await approveDevice(String(da.body.user_code), email);
    const tok = await post(d.token_endpoint, {
      grant_type: 'urn:ietf:params:oauth:grant-type:device_code', device_code: String(da.body.device_code), client_id: CLI_CLIENT_ID,
    });
    if (tok.status !== 200 || typeof tok.body.id_token !== 'string') throw new Error(`test IdP: token request failed: ${String(tok.body.error)}`);
    return tok.body.id_token;
  };

  const issueIdToken = async (email: string, overrides: IdTokenOverrides = {}): Promise<string> => {
    const user = userByEmail(email);
    const { alg = idTokenAlg, expiresInSeconds, typ, ...spec } = overrides;
    if (expiresInSeconds !== undefined) spec.expSecondsFromNow = expiresInSeconds;
    const key: SigningKey = keys[alg].pair.privateKey;
    return signIdToken({
      issuer, audience: CLI_CLIENT_ID, email, groups: user?.groups ?? [], emailVerified: user?.emailVerified ?? true,
      ...(user?.name ? { name: user.name } : {}), ...spec,
    }, key, { alg, kid: keys[alg].kid, ...(typ ? { typ } : {}) });
  };

  return {
    issuer, clientId: CLI_CLIENT_ID, users, approveDevice, authorize, registerWebClient, denyDevice, loginAs, issueIdToken, codeVerifiers,
    newSession: () => ({ browser: new Browser(), logins: 0 }),
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// --- our login and consent pages ---------------------------------------------------------------

async function interaction(provider: Provider, users: readonly TestUser[], req: IncomingMessage, res: ServerResponse): Promise<void> {
  const [, , uid = '', action = ''] = new URL(req.url ?? '/', 'http://x').pathname.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  const html = (title: string, body: string) => {
    res.setHeader('content-type', 'text/html; charset=utf-8');
    res.setHeader('cache-control', 'no-store');
    res.end(page(title, body));
  };
  const abortForm = `<form id="abort" method="post" action="/interaction/${esc(uid)}/abort"><button type="submit">Cancel</button></form>`;

  if (req.method === 'GET' && action === '') {
    if (details.prompt.name === 'login') return html('Sign in', loginForm(uid) + abortForm);
    if (details.prompt.name === 'consent') {
      const scope = esc(String(details.params.scope ?? ''));
      return html('Allow access', `<p>${esc(String(details.params.client_id))} asks for: ${scope}</p>
<form id="consent" method="post" action="/interaction/${esc(uid)}/confirm"><button type="submit">Allow</button></form>${abortForm}`);
    }
    throw new Error(`unsupported prompt ${details.prompt.name}`);
  }
  if (req.method !== 'POST') { res.statusCode = 405; res.end(); return; }
  const form = new URLSearchParams(await readBody(req));

  if (action === 'login' && details.prompt.name === 'login') {
    const email = form.get('email') ?? '';
    const user = users.find((u) => u.email === email);
    if (!user || form.get('password') !== (user.password ?? TEST_PASSWORD)) {
      return html('Sign in', `<p class="error">wrong email or password</p>${loginForm(uid)}${abortForm}`);
    }
    return provider.interactionFinished(req, res, { login: { accountId: email } }, { mergeWithLastSubmission: false });
  }
  if (action === 'confirm' && details.prompt.name === 'consent') {
    const accountId = details.session?.accountId;
    if (!accountId) throw new Error('consent without a login');
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: String(details.params.client_id) });
    if (!grant) throw new Error('grant not found');
    const missing = details.prompt.details as { missingOIDCScope?: string[]; missingOIDCClaims?: string[]; missingResourceScopes?: Record<string, string[]> };
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) grant.addResourceScope(indicator, scopes.join(' '));
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: details.grantId ? {} : { grantId } }, { mergeWithLastSubmission: true });
  }
  if (action === 'abort') {
    return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'End-User aborted interaction' }, { mergeWithLastSubmission: false });
  }
  res.statusCode = 400;
  html('Error', `<p class="error">unexpected ${esc(action)} at prompt ${esc(details.prompt.name)}</p>`);
}

function loginForm(uid: string): string {
  return `<form id="login" method="post" action="/interaction/${esc(uid)}/login">
<label>Email <input type="email" name="email" autofocus></label>
<label>Password <input type="password" name="password"></label><button type="submit">Sign in</button></form>`;
}

// --- the provider's device pages, in our page frame ----------------------------------------------

async function userCodeInputSource(ctx: { body: string }, form: string, _out: unknown, err?: Error & { userCode?: string }): Promise<void> {
  let msg = '';
  if (err?.name === 'AbortedError') msg = 'The sign-in request was interrupted';
  else if (err?.userCode || err?.name === 'NoCodeError') msg = `The code you entered is incorrect (${err.name})`;
  else if (err) msg = `There was an error processing your request (${err.name})`;
  ctx.body = page('Sign in', `${msg ? `<p class="error">${esc(msg)}</p>` : '<p>Enter the code displayed on your device</p>'}
${form}<button type="submit" form="op.deviceInputForm">Continue</button>`);
}

async function userCodeConfirmSource(ctx: { body: string }, form: string, client: { clientId: string }, _deviceInfo: unknown, userCode: string): Promise<void> {
  ctx.body = page('Confirm device', `<p>${esc(client.clientId)} shows the code <code>${esc(userCode)}</code></p>
${form}<button type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" name="abort" value="yes">Abort</button>`);
}

async function successSource(ctx: { body: string }): Promise<void> {
  ctx.body = page('Signed in', '<h2 id="device-success">Sign-in successful; you can close this page.</h2>');
}

function page(title: string, body: string): string {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head><body><h1>${esc(title)}</h1>\n${body}\n</body></html>`;
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => { body += c; if (body.length > 65_536) req.destroy(new Error('body too large')); });
    req.on('end', () => resolve(body));
    req.on('error', reject);
  });
}

// --- a tiny browser: cookie jar, manual redirects, HTML forms -------------------------------------

interface Page { url: string; status: number; html: string }

class Browser {
  private readonly jar = new Map<string, { name: string; value: string; path: string }>();

  /** GET the verification URI, enter the user code: the confirmation page. */
  async confirmPage(issuer: string, userCode: string): Promise<Page> {
    const input = await this.go(`${issuer}/device`);
    if (!hasForm(input.html, 'op.deviceInputForm')) throw new Error(`test IdP: no user code form at ${input.url}: ${errorText(input.html)}`);
    const p = await this.submit(input, 'op.deviceInputForm', { user_code: userCode });
    if (!hasForm(p.html, 'op.deviceConfirmForm')) throw new Error(`test IdP: user code ${userCode} not accepted: ${errorText(p.html)}`);
    return p;
  }

  /** With `stopAt`: a redirect whose location it accepts is not followed; its page has that URL and the 3xx status. */
  go(url: string, stopAt?: (location: string) => boolean): Promise<Page> {
    return this.request(url, 'GET', undefined, stopAt);
  }

  /** Submits form `id` of `p` as a browser would: its hidden inputs, plus `fields`. */
  submit(p: Page, id: string, fields: Record<string, string>, stopAt?: (location: string) => boolean): Promise<Page> {
    const m = new RegExp(`<form\\b[^>]*\\bid="${id.replace(/\./g, '\\.')}"[^>]*>([\\s\\S]*?)</form>`).exec(p.html);
    if (!m) throw new Error(`test IdP: no form ${id} at ${p.url}`);
    const attrs = attributes(m[0].slice(0, m[0].indexOf('>') + 1));
    const body = new URLSearchParams();
    for (const input of m[1]!.match(/<input\b[^>]*>/g) ?? []) {
      const a = attributes(input);
      if (a.type === 'hidden' && a.name) body.set(a.name, a.value ?? '');
    }
    for (const [k, v] of Object.entries(fields)) body.set(k, v);
    return this.request(new URL(attrs.action ?? p.url, p.url).href, (attrs.method ?? 'get').toUpperCase(), body, stopAt);
  }

  private async request(url: string, method: string, body?: URLSearchParams, stopAt?: (location: string) => boolean): Promise<Page> {
    for (let hops = 0; hops < 10; hops++) {
      const u = new URL(url);
      const cookie = [...this.jar.values()].filter((c) => u.pathname.startsWith(c.path)).map((c) => `${c.name}=${c.value}`).join('; ');
      const res = await fetch(url, { method, redirect: 'manual', headers: cookie ? { cookie } : {}, ...(body ? { body } : {}) });
      for (const sc of res.headers.getSetCookie()) this.store(sc, u);
      const location = res.headers.get('location');
      if (res.status >= 300 && res.status < 400 && location) {
        await res.body?.cancel();
        url = new URL(location, url).href;
        if (stopAt?.(url)) return { url, status: res.status, html: '' };
        method = 'GET';
        body = undefined;
        continue;
      }
      return { url, status: res.status, html: await res.text() };
    }
    throw new Error(`test IdP: too many redirects from ${url}`);
  }

  private store(setCookie: string, u: URL): void {
    const [pair = '', ...attrs] = setCookie.split(';').map((s) => s.trim());
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq);
    const value = pair.slice(eq + 1);
    let path = u.pathname.replace(/\/[^/]*$/, '') || '/';
    let expired = value === '';
    for (const a of attrs) {
      const [k = '', v = ''] = a.split('=');
      if (/^path$/i.test(k)) path = v;
      if (/^max-age$/i.test(k) && Number(v) <= 0) expired = true;
      if (/^expires$/i.test(k) && Date.parse(v) <= Date.now()) expired = true;
    }
    const key = `${name}|${path}`;
    if (expired) this.jar.delete(key);
    else this.jar.set(key, { name, value, path });
  }
}

function attributes(tag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of tag.matchAll(/([\w-]+)="([^"]*)"/g)) out[m[1]!.toLowerCase()] = decodeEntities(m[2]!);
  return out;
}

function decodeEntities(s: string): string {
  return s.replace(/&(#x[0-9a-f]+|#\d+|amp|lt|gt|quot|apos);/gi, (_, e: string) => {
    const named: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
    if (e[0] !== '#') return named[e.toLowerCase()]!;
    return String.fromCodePoint(e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
  });
}

function hasForm(html: string, id: string): boolean {
  return html.includes(`id="${id}"`);
}

function errorText(html: string): string {
  const m = /<p class="(?:error|red)">([\s\S]*?)<\/p>/.exec(html);
  return decodeEntities((m?.[1] ?? html.replace(/<[^>]+>/g, ' ')).replace(/\s+/g, ' ').trim()).slice(0, 300);
}

// --- storage --------------------------------------------------------------------------------------

/**
 * The provider's storage, in memory, one store per IdP instance (oidc-provider's own memory adapter
 * is shared by every provider in a process and announces itself on the console). Records are kept a
 * minute past their expiry, as a database purging lazily would, so an expired device code is still
 * found and answered with `expired_token` (RFC 8628 §3.5) rather than `invalid_grant`.
 */
function memoryAdapter() {
  const GRACE_MS = 60_000;
  const records = new Map<string, { payload: Record<string, unknown>; until: number }>();
  const index = new Map<string, string>();
  const byGrant = new Map<string, Set<string>>();
  return class Adapter {
    constructor(private readonly model: string) {}

    private get(key: string | undefined): Record<string, unknown> | undefined {
      const r = key === undefined ? undefined : records.get(key);
      if (!r) return undefined;
      if (r.until < Date.now()) { records.delete(key!); return undefined; }
      return r.payload;
    }

    async upsert(id: string, payload: Record<string, unknown>, expiresIn?: number): Promise<void> {
      const key = `${this.model}:${id}`;
      records.set(key, { payload, until: expiresIn === undefined ? Infinity : Date.now() + expiresIn * 1000 + GRACE_MS });
      if (typeof payload.userCode === 'string') index.set(`userCode:${payload.userCode}`, key);
      if (this.model === 'Session' && typeof payload.uid === 'string') index.set(`sessionUid:${payload.uid}`, key);
      if (typeof payload.grantId === 'string') {
        const s = byGrant.get(payload.grantId) ?? new Set<string>();
        byGrant.set(payload.grantId, s.add(key));
      }
    }

    async find(id: string) { return this.get(`${this.model}:${id}`); }
    async findByUserCode(userCode: string) { return this.get(index.get(`userCode:${userCode}`)); }
    async findByUid(uid: string) { return this.get(index.get(`sessionUid:${uid}`)); }
    async consume(id: string) {
      const p = this.get(`${this.model}:${id}`);
      if (p) p.consumed = Math.floor(Date.now() / 1000);
    }
    async destroy(id: string) { records.delete(`${this.model}:${id}`); }
    async revokeByGrantId(grantId: string) {
      for (const key of byGrant.get(grantId) ?? []) records.delete(key);
      byGrant.delete(grantId);
    }
  };
}
