/**
 * A sign-in URL for the AWS Management Console from a task's temporary credentials, as a custom
 * identity broker makes one (IAM User Guide, "Enable custom identity broker access to the AWS
 * console", https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_providers_enable-console-custom-url.html):
 * 1. GET `<federation>?Action=getSigninToken[&SessionDuration=N]&Session=<JSON>` where the JSON is
 *    `{"sessionId": AccessKeyId, "sessionKey": SecretAccessKey, "sessionToken": SessionToken}`; the
 *    answer is `{"SigninToken": …}`.
 * 2. `<federation>?Action=login&Issuer=<ours>&Destination=<console URL>&SigninToken=<token>`.
 * For credentials from AssumeRole, SessionDuration is the console session's length, 900 to 43200 s,
 * and the page warns that the federation call fails for a role session whose AssumeRole set
 * DurationSeconds while not called with an IAM user's long-term credentials (a broker on role
 * chaining, e.g. running on ECS/EKS): so it is sent only when asked for.
 *
 * Both URLs carry credentials (the first the secret key itself, the second a token that signs in):
 * neither is ever logged or put in an error.
 */
import { BrokerError } from '../errors.js';
import { isLoopbackHost, localhostFix, LOOPBACK_RULE, shownUrl } from '../limits/urls.js';

/** The page's bounds for SessionDuration. */
export const CONSOLE_SESSION_MIN_S = 900;
export const CONSOLE_SESSION_MAX_S = 43_200;
/** The federation endpoint answers in well under a second; a minute-long wait helps nobody. */
const FEDERATION_TIMEOUT_MS = 15_000;
/** A SigninToken is a few hundred to ~2,000 characters; anything far bigger is not one. */
const MAX_ANSWER_BYTES = 64 * 1024;

export interface ConsoleCredentials { AccessKeyId: string; SecretAccessKey: string; SessionToken: string }

/** The partition's sign-in and console hosts, from the region's name (aws, aws-cn, aws-us-gov). */
export function partitionUrls(region: string | null): { federation: string; console: string } {
  if (region?.startsWith('cn-')) return { federation: 'https://signin.amazonaws.cn/federation', console: 'https://console.amazonaws.cn/' };
  if (region?.startsWith('us-gov-')) return { federation: 'https://signin.amazonaws-us-gov.com/federation', console: 'https://console.amazonaws-us-gov.com/' };
  return { federation: 'https://signin.aws.amazon.com/federation', console: 'https://console.aws.amazon.com/' };
}

/**
 * An overriding federation endpoint (BROKER_CONSOLE_FEDERATION_URL: a test's local endpoint, or a
 * proxy): https, or plain http to this machine's loopback only (the project's rule for every URL
 * that carries credentials, limits/urls.ts), no user info, query or fragment.
 */
export function checkedFederationUrl(raw: string, from: string): string {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new BrokerError('invalid_config', `${from} is not a URL`, { hint: 'e.g. https://signin.aws.amazon.com/federation' });
  }
  const shown = shownUrl(raw) ?? 'the URL';
  if (u.username || u.password || u.search || u.hash) throw new BrokerError('invalid_config', `${from} ${shown} has a user name, query or fragment`, { hint: 'give the endpoint alone' });
  if (u.protocol === 'https:') return u.href;
  if (u.protocol === 'http:' && isLoopbackHost(u.hostname)) return u.href;
  if (u.protocol === 'http:' && u.hostname === 'localhost') throw new BrokerError('invalid_config', `${from} ${shown} is plain http to localhost`, { hint: localhostFix(u) });
  throw new BrokerError('invalid_config', `${from} ${shown} is neither https nor plain http to loopback`, { hint: `plain http only to ${LOOPBACK_RULE}` });
}

/** `url` with `params` as its query (form-encoded, as the page's examples do). */
function withQuery(url: string, params: [string, string][]): string {
  const u = new URL(url);
  for (const [k, v] of params) u.searchParams.append(k, v);
  return u.href;
}

/**
 * Asks the federation endpoint for a sign-in token and returns the login URL. Errors name the
 * endpoint (scheme, host, path) and the HTTP status, never the request's query or the answer.
 */
export async function consoleSigninUrl(o: {
  credentials: ConsoleCredentials;
  federation: string;
  destination: string;
  issuer: string;
  sessionDurationSeconds?: number;
  fetchImpl?: typeof fetch;
}): Promise<string> {
  const d = o.sessionDurationSeconds;
  if (d !== undefined && (!Number.isInteger(d) || d < CONSOLE_SESSION_MIN_S || d > CONSOLE_SESSION_MAX_S)) {
    throw new BrokerError('invalid_request', `a console session lasts ${CONSOLE_SESSION_MIN_S} to ${CONSOLE_SESSION_MAX_S} seconds (15 min to 12 h)`, { hint: 'e.g. --duration 1h' });
  }
  const session = JSON.stringify({ sessionId: o.credentials.AccessKeyId, sessionKey: o.credentials.SecretAccessKey, sessionToken: o.credentials.SessionToken });
  const tokenUrl = withQuery(o.federation, [['Action', 'getSigninToken'], ...(d !== undefined ? [['SessionDuration', String(d)] as [string, string]] : []), ['Session', session]]);
  const where = shownUrl(o.federation) ?? 'the federation endpoint';
  let res: Response;
  try {
    res = await (o.fetchImpl ?? fetch)(tokenUrl, { signal: AbortSignal.timeout(FEDERATION_TIMEOUT_MS), redirect: 'error' });
  } catch (e) {
    // The error's cause names the socket failure; its message never holds the URL, but keep to the code.
    const code = (e as { cause?: { code?: string } }).cause?.code ?? ((e as Error).name === 'TimeoutError' ? 'timed out' : 'fetch failed');
    throw new BrokerError('upstream_unavailable', `cannot reach ${where} (${code})`, { hint: 'check the network; the console sign-in needs AWS\'s federation endpoint' });
  }
  const body = await res.text();
  if (res.status !== 200) {
    throw new BrokerError('upstream_error', `${where} refused the sign-in token request (HTTP ${res.status})`, {
      hint: d !== undefined ? 'the role session may not allow that console session length: try without --duration' : 'the credentials may have expired or been revoked: broker status',
    });
  }
  let token: unknown;
  try {
    token = body.length <= MAX_ANSWER_BYTES ? (JSON.parse(body) as { SigninToken?: unknown }).SigninToken : undefined;
  } catch { /* not JSON */ }
  if (typeof token !== 'string' || !/^[A-Za-z0-9_\-+/=.]{1,8192}$/.test(token)) {
    throw new BrokerError('upstream_error', `${where} answered without a SigninToken`, { hint: 'is the federation endpoint right? (BROKER_CONSOLE_FEDERATION_URL)' });
  }
  return withQuery(o.federation, [['Action', 'login'], ['Issuer', o.issuer], ['Destination', o.destination], ['SigninToken', token]]);
}
