/**
 * The page's logins at the IdP: the authorization-code flow (OIDC Core §3.1) with PKCE S256
 * (RFC 7636 §4.2), a `state` bound to the browser (RFC 6749 §10.12) and a `nonce` bound to the ID
 * token (OIDC Core §3.1.2.1), and `max_age` from the request being decided (the IdP re-authenticates
 * a login older than that). openid-client does discovery, the authorization URL and the code
 * exchange (it checks state, nonce and PKCE); the ID token is then verified by the service's own
 * IdTokenVerifier, for the page client's audience, as every other ID token the service accepts.
 */
import * as oidc from 'openid-client';
import { BrokerError } from '../../errors.js';
import type { IdTokenVerifier, VerifiedIdToken } from '../../identity/id-token-verifier.js';
import type { LoginFlow } from './web-sessions.js';

export interface WebLoginOptions {
  issuer: string;
  clientId: string;
  /** A confidential client's secret (oidc.webClientSecretFile); a public client with PKCE without it. */
  clientSecret?: string | undefined;
  scopes: string;
  /** `<publicUrl>/requests/callback`, as registered at the IdP (known once the service listens). */
  redirectUri: () => string;
  /** A verifier whose audience and authorized party are the page's client. */
  verifier: IdTokenVerifier;
  allowInsecureHttp: boolean;
  fetchTimeoutMs?: number;
}

/** The secrets of one authorization request, kept server-side in its flow. */
export function newFlowSecrets(): { state: string; nonce: string; codeVerifier: string } {
  return { state: oidc.randomState(), nonce: oidc.randomNonce(), codeVerifier: oidc.randomPKCECodeVerifier() };
}

export class WebLogin {
  private config: oidc.Configuration | undefined;

  constructor(private readonly opts: WebLoginOptions) {}

  private async configuration(): Promise<oidc.Configuration> {
    if (this.config) return this.config;
    const timeout = Math.ceil((this.opts.fetchTimeoutMs ?? 5000) / 1000);
    try {
      this.config = await oidc.discovery(
        new URL(this.opts.issuer), this.opts.clientId, this.opts.clientSecret,
        this.opts.clientSecret ? oidc.ClientSecretBasic(this.opts.clientSecret) : oidc.None(),
        { timeout, ...(this.opts.allowInsecureHttp ? { execute: [oidc.allowInsecureRequests] } : {}) },
      );
    } catch (e) {
      throw new BrokerError('upstream_unavailable', `cannot read the IdP's discovery document for ${this.opts.issuer}`, { cause: e, hint: 'try again; if it persists, the operator checks oidc.issuer' });
    }
    return this.config;
  }

  /**
   * Where to send the browser. `maxAgeSeconds` 0 also sends `prompt=login`: some IdPs read
   * max_age=0 as "no constraint", prompt=login says it plainly (OIDC Core §3.1.2.1).
   */
  async authorizationUrl(flow: Pick<LoginFlow, 'state' | 'nonce' | 'codeVerifier'>, maxAgeSeconds?: number): Promise<string> {
    const config = await this.configuration();
    const params: Record<string, string> = {
      redirect_uri: this.opts.redirectUri(),
      scope: this.opts.scopes,
      response_type: 'code',
      state: flow.state,
      nonce: flow.nonce,
      code_challenge: await oidc.calculatePKCECodeChallenge(flow.codeVerifier),
      code_challenge_method: 'S256',
    };
    if (maxAgeSeconds !== undefined) params.max_age = String(maxAgeSeconds);
    if (maxAgeSeconds === 0) params.prompt = 'login';
    return oidc.buildAuthorizationUrl(config, params).href;
  }

  /**
   * The IdP's redirect back (`search`: the callback's query string): the code is exchanged with the
   * flow's verifier, state and nonce are checked, then the ID token is verified (not spent: the
   * caller spends it, for a view or for a decision).
   */
  async finish(flow: LoginFlow, search: string): Promise<VerifiedIdToken> {
    const config = await this.configuration();
    const current = new URL(`${this.opts.redirectUri()}${search}`);
    const idpError = current.searchParams.get('error');
    if (idpError) {
      // RFC 6749 §4.1.2.1: the IdP's own refusal (the person cancelled, or the IdP refused the client).
      const text = /^[a-z_]{1,64}$/.test(idpError) ? idpError : 'an error';
      throw new BrokerError('unauthenticated', `the IdP login did not finish (${text})`, { hint: 'log in again from the request page' });
    }
    let tokens: Awaited<ReturnType<typeof oidc.authorizationCodeGrant>>;
    try {
      tokens = await oidc.authorizationCodeGrant(config, current, {
        pkceCodeVerifier: flow.codeVerifier, expectedState: flow.state, expectedNonce: flow.nonce, idTokenExpected: true,
      });
    } catch (e) {
      if (e instanceof TypeError || (e as { code?: string }).code === 'OAUTH_TIMEOUT') {
        throw new BrokerError('upstream_unavailable', 'the IdP could not be reached to finish the login', { cause: e });
      }
      // A wrong state or nonce, a code the IdP refuses (used, expired, or not issued for this
      // verifier): one answer, the detail in the server log.
      throw new BrokerError('unauthenticated', 'the IdP login could not be verified', { cause: new Error(failureDetail(e)), hint: 'log in again from the request page' });
    }
    if (!tokens.id_token) throw new BrokerError('upstream_error', 'the IdP answered without an ID token (is the openid scope configured?)');
    return this.opts.verifier.verify(tokens.id_token);
  }
}

/**
 * What went wrong in a code exchange, for the server log: openid-client's message, its code, the
 * claim that failed (a nonce, say) or the IdP's OAuth error (RFC 6749 §5.2). No token or code in it.
 */
function failureDetail(e: unknown, depth = 0): string {
  const err = e as { message?: string; code?: string; error?: string; error_description?: string; claim?: string; cause?: unknown };
  const parts = typeof err.message === 'string' ? [err.message] : [];
  if (err.code) parts.push(`(${err.code})`);
  if (typeof err.claim === 'string') parts.push(`claim ${err.claim}`);
  if (err.error) parts.push(`IdP: ${err.error}${err.error_description ? ` (${err.error_description})` : ''}`);
  // openid-client wraps oauth4webapi's error, which names the claim (and its cause the claim again).
  if (err.cause && typeof err.cause === 'object' && depth < 2) parts.push(`← ${failureDetail(err.cause, depth + 1)}`);
  return parts.join(' ');
}
