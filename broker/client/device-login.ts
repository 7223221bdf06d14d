import { readFile, stat } from 'node:fs/promises';
import * as oidc from 'openid-client';
import { BrokerError } from '../errors.js';
import { MAX_ID_TOKEN_CHARS } from '../limits/aws.js';
import { isLoopbackHttpUrl, LOOPBACK_RULE } from '../limits/urls.js';

export interface DevicePrompt {
  verificationUri: string;
  verificationUriComplete?: string;
  userCode: string;
  /** Seconds until the user code expires. */
  expiresIn: number;
}

export interface DeviceLoginOptions {
  issuer: string;
  clientId: string;
  scope: string;
  /** Show the user where to go and which code to confirm (to stderr / the TTY, never stdout). */
  onPrompt(p: DevicePrompt): void;
  signal?: AbortSignal;
  /** Accept an http:// issuer; only on a loopback address (a local test IdP). */
  allowInsecureHttp?: boolean;
}

/** Each HTTP request to the IdP (discovery, device authorization, one poll) is bounded; seconds. */
const REQUEST_TIMEOUT_SECONDS = 10;
/**
 * We stop polling a little after the code's `expires_in`, so that the IdP's own `expired_token`
 * answer (RFC 8628 §3.5) is what normally ends an unapproved login; this is only the backstop.
 */
const EXPIRY_GRACE_MS = 5_000;

/**
 * Logs in with the OAuth 2.0 Device Authorization Grant (RFC 8628) and returns the OIDC ID token:
 * discovery, device authorization request (§3.1), show the user code (§3.3), poll the token endpoint
 * at the IdP's interval (§3.4, §3.5). No token ever appears in an error message.
 */
export async function deviceLogin(opts: DeviceLoginOptions): Promise<{ idToken: string }> {
  const config = await discoverIdp(opts);
  if (!config.serverMetadata().device_authorization_endpoint) {
    throw new BrokerError('upstream_error', `the identity provider ${opts.issuer} does not offer the device flow (no device_authorization_endpoint in its discovery document)`, {
      hint: 'enable the OAuth 2.0 device authorization grant for the broker CLI client at the IdP, or log in with --id-token-file',
    });
  }

  let authorization: oidc.DeviceAuthorizationResponse;
  try {
    authorization = await oidc.initiateDeviceAuthorization(config, { scope: opts.scope });
  } catch (e) {
    throw idpError(e, opts.issuer, 'device authorization');
  }
  opts.onPrompt({
    verificationUri: authorization.verification_uri,
    ...(typeof authorization.verification_uri_complete === 'string'
      ? { verificationUriComplete: authorization.verification_uri_complete } : {}),
    userCode: authorization.user_code,
    expiresIn: authorization.expires_in,
  });

  const expiry = AbortSignal.timeout(authorization.expires_in * 1000 + EXPIRY_GRACE_MS);
  const signal = opts.signal ? AbortSignal.any([opts.signal, expiry]) : expiry;
  let tokens: oidc.TokenEndpointResponse;
  try {
    tokens = await oidc.pollDeviceAuthorizationGrant(config, authorization, undefined, { signal });
  } catch (e) {
    if (opts.signal?.aborted) throw new BrokerError('unauthenticated', 'the login was cancelled');
    if (expiry.aborted) throw expired(authorization.expires_in);
    throw idpError(e, opts.issuer, 'token', authorization.expires_in);
  }
  if (typeof tokens.id_token !== 'string' || tokens.id_token.length === 0) {
    throw new BrokerError('upstream_error', `the identity provider ${opts.issuer} returned no ID token`, {
      hint: `the login scope must include "openid" (it is "${opts.scope}"); check oidc.scopes in the broker service config`,
    });
  }
  return { idToken: tokens.id_token };
}

/**
 * The IdP's discovery document (OIDC Discovery §4), for the broker CLI's public client (no client
 * authentication: `token_endpoint_auth_method: none`).
 */
export async function discoverIdp(opts: { issuer: string; clientId: string; allowInsecureHttp?: boolean }): Promise<oidc.Configuration> {
  const issuer = issuerUrl(opts.issuer, opts.allowInsecureHttp === true);
  try {
    return await oidc.discovery(issuer, opts.clientId, undefined, oidc.None(), {
      timeout: REQUEST_TIMEOUT_SECONDS,
      ...(issuer.protocol === 'http:' ? { execute: [oidc.allowInsecureRequests] } : {}),
    });
  } catch (e) {
    throw idpError(e, opts.issuer, 'discovery');
  }
}

function issuerUrl(issuer: string, allowInsecureHttp: boolean): URL {
  let url: URL;
  try {
    url = new URL(issuer);
  } catch {
    throw new BrokerError('invalid_config', `the IdP issuer "${issuer}" is not a URL`, { hint: 'check oidc.issuer in the broker service config' });
  }
  if (url.protocol === 'https:') return url;
  // The token endpoint answers with tokens in clear text, so OAuth requires TLS (RFC 6749 §3.2) and
  // OIDC Discovery an https issuer (§3); plain http is only for an IdP on this machine (the test IdP).
  // Loopback as broker/limits/urls.ts decides it, the rule the service applies to oidc.issuer.
  if (allowInsecureHttp && isLoopbackHttpUrl(url)) return url;
  throw new BrokerError('invalid_config', `the IdP issuer ${issuer} is not an https URL`, {
    hint: url.protocol === 'http:' && allowInsecureHttp
      ? `allowInsecureHttp only permits an IdP on a loopback address (${LOOPBACK_RULE})`
      : 'use the IdP\'s https issuer URL (oidc.issuer in the broker service config)',
  });
}

function expired(expiresIn: number): BrokerError {
  return new BrokerError('unauthenticated', 'the login code expired before it was approved', {
    hint: `run broker login again and confirm the code at the IdP within ${Math.max(1, Math.round(expiresIn / 60))} min`,
  });
}

/**
 * One clear error per way the IdP can fail us. The IdP's own `error` and `error_description` are
 * quoted (they help the operator); response bodies and tokens never are.
 */
export function idpError(e: unknown, issuer: string, step: string, expiresIn = 0): BrokerError {
  if (e instanceof oidc.ResponseBodyError) {
    switch (e.error) {
      case 'access_denied': // RFC 8628 §3.5: the user (or the IdP's policy) refused
        return new BrokerError('forbidden', 'the login was denied at the identity provider', {
          hint: 'run broker login again and approve the request; if you did, ask your IdP admin whether you may use the broker CLI',
        });
      case 'expired_token': // RFC 8628 §3.5
        return expired(expiresIn);
      case 'invalid_grant':
        return new BrokerError('unauthenticated', 'the identity provider no longer accepts this login code (expired or already used)', {
          hint: 'run broker login again',
        });
      case 'invalid_client':
      case 'unauthorized_client':
      case 'invalid_scope':
        return new BrokerError('upstream_error', `the identity provider refused the ${step} request: ${describe(e)}`, {
          hint: step === 'token' || step === 'device authorization'
            ? 'the broker service\'s oidc.cliClientId and oidc.scopes must name a public client with the device grant enabled at the IdP'
            : 'the broker service\'s oidc.cliClientId must name a public native client with the authorization code grant and the redirect URI http://127.0.0.1/callback (any port) at the IdP',
        });
      default:
        return new BrokerError('upstream_error', `the identity provider answered the ${step} request with ${describe(e)}`);
    }
  }
  if (isNetworkError(e)) {
    return new BrokerError('upstream_unavailable', `cannot reach the identity provider at ${issuer}`, {
      cause: e, hint: 'check the network and the IdP issuer URL (oidc.issuer in the broker service config)',
    });
  }
  // openid-client's own errors (bad discovery document, issuer mismatch, a response that fails its
  // checks) carry fixed messages without response content.
  const status = e instanceof Error && e.cause instanceof Response ? ` (HTTP ${e.cause.status})` : '';
  const message = e instanceof oidc.ClientError ? `${e.message}${status}` : 'unexpected failure';
  return new BrokerError('upstream_error', `the identity provider's ${step} response was not usable: ${message}`, {
    hint: step === 'discovery' ? `${issuer}/.well-known/openid-configuration must be the IdP's discovery document, naming exactly that issuer` : undefined,
  });
}

function describe(e: oidc.ResponseBodyError): string {
  // error is an RFC 6749 §5.2 code, error_description free text from the IdP; bound both.
  const code = String(e.error).slice(0, 64);
  const text = typeof e.error_description === 'string' ? `: ${e.error_description.slice(0, 200)}` : '';
  return `${code}${text}`;
}

function isNetworkError(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  if (e.name === 'TimeoutError' || e.name === 'AbortError') return true;
  // undici's fetch rejects with TypeError('fetch failed', { cause: ECONNREFUSED … }).
  if (e instanceof TypeError && e.message === 'fetch failed') return true;
  return e.cause !== undefined && e.cause !== e && isNetworkError(e.cause);
}

/**
 * Reads an ID token obtained elsewhere (e.g. a CI system's OIDC token) for `broker login
 * --id-token-file`: a file path, or `-` for stdin. Only the shape is checked here (compact JWS, RFC
 * 7515 §7.1); the broker service verifies the signature and claims. The content is never echoed.
 */
export async function readIdTokenFile(pathOrDash: string, stdin: NodeJS.ReadableStream & { isTTY?: boolean } = process.stdin): Promise<string> {
  const where = pathOrDash === '-' ? 'stdin' : pathOrDash;
  let raw: string;
  if (pathOrDash === '-') {
    if (stdin.isTTY) {
      // Typing or pasting it would leave the token on screen and in the scrollback.
      throw new BrokerError('invalid_request', '--id-token-file - reads the ID token from stdin, which is a terminal', {
        hint: 'pipe the token in (e.g. `broker login --id-token-file - < token.jwt`) or pass a file path',
      });
    }
    raw = await readBounded(stdin);
  } else {
    try {
      const s = await stat(pathOrDash);
      if (!s.isFile()) throw new BrokerError('invalid_request', `--id-token-file ${where} is not a file`);
      if (s.size > MAX_FILE_BYTES) throw tooLong(where);
      raw = await readFile(pathOrDash, 'utf8');
    } catch (e) {
      if (e instanceof BrokerError) throw e;
      const code = (e as NodeJS.ErrnoException).code;
      throw new BrokerError('invalid_request', `cannot read --id-token-file ${where}${code ? ` (${code})` : ''}`, {
        hint: code === 'ENOENT' ? 'check the path' : code === 'EACCES' ? 'check the file\'s permissions' : undefined,
      });
    }
  }
  const token = raw.trim();
  if (token.length === 0) {
    throw new BrokerError('invalid_request', `--id-token-file ${where} is empty`, { hint: 'it must hold the ID token (a JWT)' });
  }
  if (token.length > MAX_ID_TOKEN_CHARS) throw tooLong(where);
  if (!looksLikeJws(token)) {
    throw new BrokerError('invalid_request', `--id-token-file ${where} does not hold a JWT`, {
      hint: 'expected one signed ID token in compact form (three base64url parts: header.payload.signature), nothing else',
    });
  }
  return token;
}

/** The token (ASCII, so chars = bytes) plus room for surrounding whitespace. */
const MAX_FILE_BYTES = MAX_ID_TOKEN_CHARS + 4096;

function tooLong(where: string): BrokerError {
  return new BrokerError('invalid_request', `--id-token-file ${where} is larger than an ID token can be (${MAX_ID_TOKEN_CHARS} chars)`);
}

async function readBounded(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    size += b.length;
    if (size > MAX_FILE_BYTES) throw tooLong('stdin');
    chunks.push(b);
  }
  return Buffer.concat(chunks).toString('utf8');
}

const B64URL = /^[A-Za-z0-9_-]+$/;

function looksLikeJws(token: string): boolean {
  const parts = token.split('.');
  if (parts.length !== 3 || !B64URL.test(parts[0]!) || !B64URL.test(parts[1]!) || !/^[A-Za-z0-9_-]*$/.test(parts[2]!)) return false;
  try {
    const header: unknown = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
    const payload: unknown = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
    return isObject(header) && typeof header.alg === 'string' && isObject(payload);
  } catch {
    return false;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
