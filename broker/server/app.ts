import type { JWK } from 'jose';
import { Hono, type Context } from 'hono';
import type { AdminEndResult, AdminService } from '../admin/admin-service.js';
import { parseDuration } from '../duration.js';
import { bodyLimit } from 'hono/body-limit';
import type { z } from 'zod';
import { BrokerError, isBrokerError } from '../errors.js';
import type { BrokerTokens } from '../identity/broker-tokens.js';
import type { DpopVerifier } from '../identity/dpop-verifier.js';
import { idTokenFailureReason, type IdTokenVerifier } from '../identity/id-token-verifier.js';
import { DenialRecorded, type BrokerLogins, type IssuedLogin } from '../identity/logins.js';
import type { Principal } from '../identity/principal.js';
import { DISCOVERY_PATH, WEB_IDENTITY_JWKS_PATH, type WebIdentityTokens } from '../identity/web-identity-tokens.js';
import type { Logger } from '../log.js';
import { NO_METRICS, type BrokerMetrics, type ServiceMetrics } from '../metrics/service-metrics.js';
import type { AwsCredentials, IssuedCredentials, IssuedVaultToken, TaskSessionService } from '../sessions/task-session-service.js';
import type { AuditRecord } from '../store/audit-event.js';
import { ALL_TEMPLATES, type Freeze } from '../store/freezes.js';
import type { AuditLog, SessionFilter } from '../store/store.js';
import type { DeviceConfirmations } from '../requests/device-confirmations.js';
import type { StartRequest, StartRequests } from '../requests/start-requests.js';
import type { ReloadBy, ReloadResult } from '../templates/catalog.js';
import { bodyIssueDetails } from '../wire/json-pointer.js';
import {
  adminAuditQuery, type adminAuditResponse, queryIssueDetails, adminEndRequest, adminFreezeRequest, adminOffboardRequest, adminReloadRequest, type adminStatusResponse, adminUnfreezeRequest,
  type adminEndResponse, type adminFreezeResponse, type adminFreezesResponse, type adminOffboardResponse, type adminReloadResponse, type adminSessionResponse,
  type adminSessionsResponse, type adminUnfreezeResponse, type auditRecordView, type freezeView, type sessionStateResponse,
  idTokenRequest, logoutRequest, MAX_REQUEST_BODY_BYTES, REQUEST_ID_RE, refreshRequest, startConfirmationRequest, startSessionRequest, updateSessionRequest,
  type confirmationRequiredBody, type confirmationStatusResponse, type deviceConfirmationResponse, type startRequestResponse, type startRequestsResponse,
  type authRefreshResponse, type authTokenResponse, type Body, type endSessionResponse, type errorBody, type healthResponse,
  type LoginConfig, type loginInfo, type logoutResponse, type processCredentials, type reissueCredentialsResponse, type sessionsResponse,
  type startSessionResponse, type templatesResponse, type updateSessionResponse, type vaultTokenGrant, type vaultTokenResponse, type whoamiResponse,
} from '../wire/service-api.js';
import { clientAddress } from './client-address.js';
import type { Denial, DenialAudit } from './denial-audit.js';
import { RateLimiter, type AuthRateLimiter } from './rate-limit.js';
import { mountRequestPages, type RequestPagesDeps } from './web/index.js';

export interface AppDeps {
  tokens: BrokerTokens;
  logins: BrokerLogins;
  idTokens: IdTokenVerifier;
  dpop: DpopVerifier;
  /** The buckets of `/v1/auth/*`, and the aggregate audit of its refusals. */
  authLimiter: AuthRateLimiter;
  denials: DenialAudit;
  trustedProxyHops: number;
  /** The URL clients reach the service at (DPoP proofs name it, RFC 9449 §4.2 `htu`); known once listening. */
  publicUrl: () => string;
  sessions: TaskSessionService;
  auditLog: AuditLog;
  /** The audit key's public JWKs, for verifying checkpoints (`broker audit verify --keys`); empty without checkpoints. */
  auditJwks?: { keys: JWK[] };
  /** The broker as an OIDC issuer for AWS (README, "A broker without AWS keys"); absent: no discovery document. */
  webIdentity?: WebIdentityTokens | undefined;
  log: Logger;
  loginConfig: LoginConfig;
  issuePerMinute: number;
  /**
   * Start requests (README, "Confirmation"). Absent: every start is direct, as before start
   * requests existed (unit tests of other routes); the service (start.ts) always has them.
   */
  requests?: StartRequests | undefined;
  /** Device confirmations from a terminal (RFC 8628 at the IdP, run by the service). */
  confirmations?: DeviceConfirmations | undefined;
  /** The request page (`/requests`, broker/server/web/); absent: no page (API-only unit tests). */
  pages?: RequestPagesDeps | undefined;
  /** The control plane (`/v1/admin/*`). Absent: those routes answer 404 (unit tests of other routes). */
  admin?: AdminService | undefined;
  /** Reads policiesDir again (`POST /v1/admin/reload`; server/start.ts). Absent: that route answers 404. */
  reload?: ((by: ReloadBy) => Promise<ReloadResult>) | undefined;
  now?: () => number;
  /** Refusals on the routes are counted here (absent: not counted). */
  metrics?: BrokerMetrics | undefined;
  /**
   * `GET /metrics` on this app, for administrators only (a bearer token of an admin, as for
   * /v1/admin/*); absent: no such route (a metrics listener of its own, or metrics.adminRoute off).
   */
  adminMetrics?: ServiceMetrics | undefined;
}

/** What a refused `/v1/auth/*` request is audited as, when its handler knows more than the error says. */
type DenialNote = Pick<Denial, 'reason' | 'developer'>;
type Env = { Variables: { principal: Principal; denial: DenialNote | undefined } };

/** The audit event of each unauthenticated route. */
function authEvent(path: string): Denial['event'] {
  if (path.startsWith('/v1/auth/refresh')) return 'token.refresh';
  if (path.startsWith('/v1/auth/logout')) return 'login.revoke';
  return 'login';
}

/** The `login` object of a token response. */
function loginBody(r: NonNullable<IssuedLogin['refresh']>): Body<typeof loginInfo> {
  return { id: r.familyId, generation: r.generation, expiresAt: new Date(r.expiresAt).toISOString() };
}

/** A request body by its schema (wire/service-api.ts); a 400 names every problem by JSON pointer. */
async function parseBody<T extends z.ZodType>(c: Context, schema: T): Promise<z.infer<T>> {
  let raw: unknown;
  try {
    raw = await c.req.json();
  } catch {
    throw new BrokerError('invalid_request', 'request body is not valid JSON', { hint: 'send Content-Type: application/json with a JSON object' });
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new BrokerError('invalid_request', 'request body is invalid', {
      details: bodyIssueDetails(parsed.error),
    });
  }
  return parsed.data;
}

/** The credential_process document: what the daemon hands to AWS clients as it is. */
function credentialsDoc(c: AwsCredentials): Body<typeof processCredentials> {
  return {
    Version: 1,
    AccessKeyId: c.accessKeyId,
    SecretAccessKey: c.secretAccessKey,
    SessionToken: c.sessionToken,
    Expiration: c.expiration.toISOString(),
    ...(c.accountId ? { AccountId: c.accountId } : {}),
  };
}

function startedBody(r: IssuedCredentials): Body<typeof startSessionResponse> {
  return {
    session: r.session,
    ...(r.credentials ? { credentials: credentialsDoc(r.credentials) } : {}),
    ...(r.vault ? { vault: vaultBody(r.vault) } : {}),
  };
}

/** The `vault` object of a response: the token for the daemon, and what it needs to renew it. */
function vaultBody(v: IssuedVaultToken): Body<typeof vaultTokenGrant> {
  return {
    token: v.token,
    accessor: v.accessor,
    policies: v.policies,
    ttlSeconds: v.ttlSeconds,
    expiresAt: v.expiresAt.toISOString(),
    maxExpiresAt: v.maxExpiresAt.toISOString(),
    renewable: v.renewable,
    numUses: v.numUses,
    address: v.address,
    ...(v.namespace ? { namespace: v.namespace } : {}),
  };
}

/** RFC 9470 §3: the step-up challenge; `max_age` is how recent the IdP login must be (§4). */
function stepUpChallenge(message: string, maxAgeSeconds: number): string {
  return `Bearer error="insufficient_user_authentication", error_description="${message.replace(/["\\]/g, '')}", max_age=${maxAgeSeconds}`;
}

function freezeBody(f: Freeze): Body<typeof freezeView> {
  return { scope: f.scope, reason: f.reason, by: f.by, at: new Date(f.at).toISOString() };
}

function recordBody(r: AuditRecord): Body<typeof auditRecordView> {
  // Only the fields that are set: the view's optional fields are absent, never null.
  return Object.fromEntries(Object.entries(r).filter(([k, v]) => v !== undefined && k !== 'hash')) as Body<typeof auditRecordView>;
}

function endedBody(r: AdminEndResult): Body<typeof adminEndResponse> {
  return { ended: r.ended, alreadyEnded: r.alreadyEnded, stsRevocation: r.stsRevocation };
}

/** The filters of `GET /v1/admin/sessions`, each checked: a 400 names the parameter and the fix. */
function sessionFilter(q: Record<string, string>, now: number): SessionFilter {
  const bad = (path: string, message: string) => new BrokerError('invalid_request', `${path}: ${message}`, { details: [{ path, message }] });
  const known = new Set(['developer', 'template', 'agent', 'active', 'since', 'limit']);
  for (const k of Object.keys(q)) if (!known.has(k)) throw bad(k, `unknown filter; use ${[...known].join(', ')}`);
  const active = q.active === undefined ? false : q.active === '1' || q.active === 'true' ? true : undefined;
  if (active === undefined) throw bad('active', 'must be 1 or true');
  let since: number | undefined;
  if (q.since !== undefined) {
    const seconds = parseDuration(q.since);
    if (seconds === undefined || seconds === 0) throw bad('since', `"${q.since.slice(0, 40)}" is not a duration; use e.g. 24h, 7d`);
    since = now - seconds * 1000;
  }
  if (active && since !== undefined) throw bad('since', 'give active or since, not both');
  const limit = q.limit === undefined ? 500 : Number(q.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 5000) throw bad('limit', 'must be a whole number from 1 to 5000');
  for (const k of ['developer', 'template', 'agent'] as const) if (q[k] !== undefined && (q[k] === '' || q[k].length > 320)) throw bad(k, 'must be 1 to 320 characters');
  return { developer: q.developer, template: q.template, agent: q.agent, activeOnly: active, since, limit };
}

/**
 * The query of `GET /v1/admin/audit` by its schema (wire/service-api.ts): a parameter given once is a
 * string, repeated a list; a 400 names each bad parameter.
 */
function auditQuery(c: Context): z.output<typeof adminAuditQuery> {
  const raw = Object.fromEntries(Object.entries(c.req.queries()).map(([k, v]) => [k, v.length === 1 ? v[0] : v]));
  const parsed = adminAuditQuery.safeParse(raw);
  if (!parsed.success) {
    const details = queryIssueDetails(parsed.error);
    throw new BrokerError('invalid_request', `${details[0]?.path ? `${details[0].path}: ` : ''}${details[0]?.message ?? 'invalid query'}`, { details });
  }
  return parsed.data;
}

/**
 * The service's HTTP API. One error path: BrokerError → `{code, message, hint?, details?}` with the
 * code's status; anything else → a generic 500 whose detail stays in the server log.
 */
export function createApp(deps: AppDeps): Hono<Env> {
  const app = new Hono<Env>();
  const limiter = new RateLimiter(deps.issuePerMinute, deps.now);
  const metrics = deps.metrics ?? NO_METRICS;

  app.onError((err, c) => {
    if (isBrokerError(err)) {
      if (err.status >= 500) deps.log.warn({ code: err.code, msg: err.message, cause: (err.cause as Error)?.message }, 'request failed');
      if (err.code === 'unauthenticated') c.header('WWW-Authenticate', 'Bearer error="invalid_token"');
      if (err.stepUpMaxAgeSeconds !== undefined) c.header('WWW-Authenticate', stepUpChallenge(err.message, err.stepUpMaxAgeSeconds));
      if (err.retryAfterSeconds !== undefined) c.header('Retry-After', String(err.retryAfterSeconds));
      return c.json(err.toJSON() satisfies Body<typeof errorBody>, err.status as 400);
    }
    deps.log.error({ err: (err as Error).message, stack: (err as Error).stack }, 'unhandled error');
    return c.json({ code: 'internal', message: 'internal error' } satisfies Body<typeof errorBody>, 500);
  });
  app.notFound((c) => c.json({ code: 'not_found', message: `no route ${c.req.method} ${c.req.path}` } satisfies Body<typeof errorBody>, 404));

  // The unauthenticated routes: the buckets first, before the body is read or any signature
  // checked; then every refusal nobody authenticated owns is audited in aggregate (denial-audit.ts),
  // its detail in the server log.
  app.use('/v1/auth/*', async (c, next) => {
    const address = clientAddress(c, deps.trustedProxyHops);
    const event = authEvent(c.req.path);
    const limit = deps.authLimiter.take(address);
    if (!limit.ok) {
      metrics.rateLimited(limit.scope === 'address' ? 'auth_per_address' : 'auth_global');
      metrics.denial(event, 'rate_limited');
      const reason = `rate limited (${limit.scope === 'address' ? 'per address' : 'all addresses'})`;
      deps.log.info({ address, event, reason }, 'auth request refused');
      await deps.denials.record({ event, reason, address });
      throw new BrokerError('rate_limited', `too many sign-in requests; retry in ${limit.retryAfterSeconds}s`, { retryAfterSeconds: limit.retryAfterSeconds });
    }
    await next();
    const e = c.error;
    if (isBrokerError(e) && e.status < 500 && !(e.cause instanceof DenialRecorded)) {
      const note = c.get('denial');
      // Reasons from fixed sets (the handlers' notes, the errors' fixed messages), never request text.
      const reason = note?.reason ?? (e.code === 'rate_limited' ? 'rate limited' : e.message);
      deps.log.info({ address, event, reason, developer: note?.developer }, 'auth request refused');
      metrics.denial(event, e.code);
      await deps.denials.record({ event, reason, developer: note?.developer, address });
    } else if (e && isBrokerError(e) && e.cause instanceof DenialRecorded) {
      metrics.denial(event, e.code);
      deps.log.info({ address, event, reason: e.cause.message }, 'auth request refused');
    }
  });

  // A declared Content-Length over the limit is refused before any byte is read; a chunked body
  // (no length) as soon as it grows past it. 413 Content Too Large: RFC 9110 §15.5.14.
  app.use('*', bodyLimit({
    maxSize: MAX_REQUEST_BODY_BYTES,
    onError: () => { throw new BrokerError('payload_too_large', `request body larger than the limit of ${MAX_REQUEST_BODY_BYTES} bytes`); },
  }));

  app.get('/healthz', (c) => c.json({ ok: true } as const satisfies Body<typeof healthResponse>));
  app.get('/.well-known/jwks.json', (c) => c.json(deps.tokens.publicJwks()));
  app.get('/.well-known/audit-jwks.json', (c) => c.json(deps.auditJwks ?? { keys: [] }));
  const webIdentity = deps.webIdentity;
  if (webIdentity) {
    // What AWS fetches to verify the broker's web-identity tokens (web-identity-tokens.ts).
    app.get(DISCOVERY_PATH, (c) => c.json(webIdentity.discovery()));
    app.get(WEB_IDENTITY_JWKS_PATH, (c) => c.json(webIdentity.publicJwks()));
  }
  app.get('/v1/login-config', (c) => c.json(deps.loginConfig satisfies LoginConfig));
  if (deps.pages) mountRequestPages(app, deps.pages);

  const dpopJkt = (c: Context, path: string) => deps.dpop.verify(c.req.header('dpop'), { method: c.req.method, url: `${deps.publicUrl()}${path}` });
  /** Runs `step`; if it refuses, notes how the refusal is to be audited (`reason`, and who when known). */
  const noted = async <T>(c: Context<Env>, note: (e: BrokerError) => DenialNote, step: () => Promise<T>): Promise<T> => {
    try {
      return await step();
    } catch (e) {
      if (isBrokerError(e) && e.status < 500) c.set('denial', note(e));
      throw e;
    }
  };
  const proofNote = (developer?: string) => (e: BrokerError): DenialNote => ({ reason: e.code === 'unauthenticated' ? `DPoP proof rejected: ${e.message}` : 'DPoP proofs: too many', developer });
  const refreshNote = (e: BrokerError): DenialNote => ({ reason: `refresh token rejected: ${(e.cause as Error | undefined)?.message ?? e.message}` });

  // Exchange an IdP ID token for broker tokens. With a DPoP proof (RFC 9449 §5) the response also
  // carries a refresh token bound to the proof's key, and a login (refresh-token family) starts;
  // without one, only a short access token.
  app.post('/v1/auth/token', async (c) => {
    const { id_token } = await parseBody(c, idTokenRequest);
    const verified = await noted(c, (e) => ({ reason: `ID token rejected: ${idTokenFailureReason(e.cause)}` }), () => deps.idTokens.verify(id_token));
    // The proof before the token is spent: a request refused for its proof leaves the ID token usable.
    const jkt = c.req.header('dpop') === undefined ? undefined : await noted(c, proofNote(verified.principal.id), () => dpopJkt(c, '/v1/auth/token'));
    const principal = await noted(c, (e) => ({ reason: `ID token rejected: ${idTokenFailureReason(e.cause)}` }), () => deps.idTokens.accept(verified));
    const r = await deps.logins.login(principal, jkt);
    c.header('cache-control', 'no-store');
    return c.json({
      access_token: r.accessToken, ...(r.refresh ? { refresh_token: r.refresh.token, login: loginBody(r.refresh) } : {}), token_type: 'Bearer',
      expires_in: r.accessTokenExpiresIn, developer: principal.id, groups: principal.groups,
    } satisfies Body<typeof authTokenResponse>);
  });

  // A refresh token is only honoured with a proof from the key it is bound to (RFC 9449 §5), and
  // only once: the answer carries the next one (RFC 9700 §4.14.2). The token is checked first
  // (signature, typ, expiry), so garbage costs no proof verification and takes no proof jti.
  app.post('/v1/auth/refresh', async (c) => {
    const { refresh_token } = await parseBody(c, refreshRequest);
    const claims = await noted(c, refreshNote, () => deps.logins.verifyRefreshToken(refresh_token));
    const jkt = await noted(c, proofNote(claims.developer), () => dpopJkt(c, '/v1/auth/refresh'));
    const r = await noted(c, (e) => ({ reason: `refresh refused: ${(e.cause as Error | undefined)?.message ?? e.message}`, developer: claims.developer }),
      () => deps.logins.refresh(claims, jkt));
    c.header('cache-control', 'no-store');
    return c.json({
      access_token: r.accessToken, refresh_token: r.refresh.token, token_type: 'Bearer', expires_in: r.accessTokenExpiresIn,
      developer: r.principal.id, login: loginBody(r.refresh),
    } satisfies Body<typeof authRefreshResponse>);
  });

  // `broker logout`: any refresh token of the login, with a proof by its key, revokes the login (its
  // refresh tokens buy nothing more; its access tokens are refused from the next request).
  app.post('/v1/auth/logout', async (c) => {
    const { refresh_token } = await parseBody(c, logoutRequest);
    const claims = await noted(c, refreshNote, () => deps.logins.verifyRefreshToken(refresh_token));
    const jkt = await noted(c, proofNote(claims.developer), () => dpopJkt(c, '/v1/auth/logout'));
    const r = await noted(c, (e) => ({ reason: `logout refused: ${(e.cause as Error | undefined)?.message ?? e.message}`, developer: claims.developer }),
      () => deps.logins.logout(claims, jkt));
    return c.json({ revoked: r.revoked, login: { id: claims.familyId, expiresAt: new Date(r.expiresAt).toISOString() } } satisfies Body<typeof logoutResponse>);
  });

  /** The principal of the request's broker access token (RFC 6750 bearer), of a login still live. */
  const bearer = async (c: Context<Env>): Promise<Principal> => {
    const h = c.req.header('authorization') ?? '';
    const m = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/.exec(h);
    if (!m) throw new BrokerError('unauthenticated', 'missing bearer token', { hint: 'run: broker login' });
    return deps.logins.principalOf(await deps.tokens.verifyAccess(m[1]!));
  };

  // Everything under /v1 below needs a broker access token of a login still live.
  app.use('/v1/*', async (c, next) => {
    c.set('principal', await bearer(c));
    await next();
  });

  // Outside /v1/admin, so with its own check (the same one): an admin's bearer token, or 401/403.
  // The scrape path for Prometheus is the metrics listener (start.ts); this is for a person.
  const adminMetrics = deps.adminMetrics;
  if (adminMetrics) {
    app.get('/metrics', async (c) => {
      if (!deps.admin) throw new BrokerError('not_found', 'this service has no admin API');
      await deps.admin.requireAdmin(await bearer(c), 'GET /metrics');
      const { contentType, body } = await adminMetrics.exposition();
      c.header('cache-control', 'no-store');
      return c.body(body, 200, { 'content-type': contentType });
    });
  }

  const rateLimited = (c: Context<Env>) => {
    const retry = limiter.take(c.get('principal').id);
    if (retry > 0) metrics.rateLimited('issue_per_minute');
    if (retry > 0) throw new BrokerError('rate_limited', `too many credential requests; retry in ${retry}s`, { retryAfterSeconds: retry });
  };

  app.get('/v1/whoami', (c) => c.json(c.get('principal') satisfies Body<typeof whoamiResponse>));

  app.get('/v1/templates', (c) => c.json({
    templates: deps.sessions.startableTemplates(c.get('principal')).map((t) => ({
      name: t.name, description: t.description, region: t.aws?.region ?? null,
      grants: [...(t.aws ? ['aws' as const] : []), ...(t.vault ? ['vault' as const] : [])],
      parameters: Object.fromEntries(t.parameters.map((p) => [p.name, { description: p.description ?? '', pattern: p.pattern, maxLength: p.maxLength }])),
      maxSessionSeconds: t.maxSessionSeconds, credentialLifetimeSeconds: t.credentialLifetimeSeconds, version: t.version,
    })),
  } satisfies Body<typeof templatesResponse>));

  app.get('/v1/sessions', async (c) => c.json({ sessions: await deps.sessions.list(c.get('principal')) } satisfies Body<typeof sessionsResponse>));

  const requests = () => {
    if (!deps.requests) throw new BrokerError('not_found', 'this service has no start requests');
    return deps.requests;
  };
  const requestId = (c: Context) => {
    const id = c.req.param('id') ?? '';
    if (!REQUEST_ID_RE.test(id)) throw new BrokerError('not_found', `no start request ${id.slice(0, 40)}`);
    return id;
  };
  const view = (r: StartRequest) => requests().view(r);

  app.post('/v1/sessions', async (c) => {
    const body = await parseBody(c, startSessionRequest);
    rateLimited(c);
    const p = c.get('principal');
    const ask = { template: body.template, params: body.params, reason: body.reason, agent: body.agent, ttlSeconds: body.ttl };
    let r: IssuedCredentials;
    if (body.confirmedRequest !== undefined) {
      r = await requests().startConfirmed(p, body.confirmedRequest, ask);
    } else {
      // A frozen template is refused before anyone is asked to confirm a start that cannot happen.
      await deps.sessions.notFrozen(body.template, { event: 'session.start', developer: p.id, template: body.template });
      const pending = deps.requests ? await deps.requests.ask(p, { ...ask, breakGlass: body.breakGlass }) : undefined;
      if (pending) {
        const status = deps.requests!.challengeStatus(pending);
        const v = view(pending);
        const message = status === 401
          ? `starting "${pending.template}" needs your confirmation with a fresh IdP login (request ${pending.id})`
          : `starting "${pending.template}" needs approval (request ${pending.id}): ${v.waitingFor.join('; ')}`;
        deps.log.info({ developer: p.id, template: pending.template, request: pending.id, status }, 'start request pending');
        if (status === 401) {
          c.header('WWW-Authenticate', stepUpChallenge(message, pending.maxAgeSeconds));
        }
        c.header('cache-control', 'no-store');
        return c.json({
          code: 'confirmation_required', message, hint: `confirm at ${v.url}, or from a terminal: broker approve ${pending.id}`, request: v,
        } satisfies Body<typeof confirmationRequiredBody>, status);
      }
      if (body.breakGlass) throw new BrokerError('invalid_request', `"${body.template}" needs no confirmation: breakGlass does not apply`);
      r = await deps.sessions.start(p, ask);
    }
    // The AccessKeyId and the Vault accessor identify what was issued; never the secrets.
    deps.log.info({
      developer: c.get('principal').id, template: body.template, session: r.session.id,
      accessKeyId: r.credentials?.accessKeyId, vaultAccessor: r.vault?.accessor,
    }, 'task session started');
    c.header('cache-control', 'no-store');
    return c.json(startedBody(r), 201);
  });

  app.post('/v1/sessions/:id/credentials', async (c) => {
    rateLimited(c);
    const r = await deps.sessions.reissue(c.get('principal'), c.req.param('id'));
    deps.log.info({ developer: c.get('principal').id, session: r.session.id, accessKeyId: r.credentials.accessKeyId }, 'credentials re-issued');
    c.header('cache-control', 'no-store');
    return c.json({ session: r.session, credentials: credentialsDoc(r.credentials) } satisfies Body<typeof reissueCredentialsResponse>);
  });

  // Which agent works under the session (`broker exec` names it): credentials issued from now on carry
  // it as their broker:agent tag; the change is audited.
  app.patch('/v1/sessions/:id', async (c) => {
    const body = await parseBody(c, updateSessionRequest);
    const s = await deps.sessions.setAgent(c.get('principal'), c.req.param('id'), body.agent);
    return c.json({ session: s } satisfies Body<typeof updateSessionResponse>);
  });

  // A fresh Vault token under an active session (the daemon's fallback when renewal fails).
  app.post('/v1/sessions/:id/vault-token', async (c) => {
    rateLimited(c);
    const r = await deps.sessions.reissueVaultToken(c.get('principal'), c.req.param('id'));
    deps.log.info({ developer: c.get('principal').id, session: r.session.id, vaultAccessor: r.vault.accessor }, 'Vault token re-issued');
    // Responses that carry secrets are never stored by a cache (as for OAuth token responses, RFC 6749 §5.1).
    c.header('cache-control', 'no-store');
    return c.json({ session: r.session, vault: vaultBody(r.vault) } satisfies Body<typeof vaultTokenResponse>);
  });

  // The daemon's cheap check, at least once a minute while it holds credentials of the session:
  // ended (by an admin or otherwise), expired or frozen, and it stops handing them out.
  app.get('/v1/sessions/:id', async (c) => {
    const r = await deps.sessions.state(c.get('principal'), c.req.param('id'));
    return c.json({
      session: r.session, state: r.state, endedAt: r.endedAt === null ? null : new Date(r.endedAt).toISOString(), endReason: r.endReason,
      endedByAdmin: r.endedByAdmin, frozen: r.frozen ? { scope: r.frozen.scope, reason: r.frozen.reason } : null,
    } satisfies Body<typeof sessionStateResponse>);
  });

  app.delete('/v1/sessions/:id', async (c) => {
    const r = await deps.sessions.end(c.get('principal'), c.req.param('id'));
    const pending = r.vaultTokens.filter((t) => !t.revoked).length;
    deps.log.info({ developer: c.get('principal').id, session: r.session.id, vaultTokensRevoked: r.vaultTokens.length - pending, vaultTokensPending: pending, awsRevocation: r.awsRevocation }, 'task session ended');
    return c.json({ ended: r.session, vaultTokens: r.vaultTokens, awsRevocation: r.awsRevocation } satisfies Body<typeof endSessionResponse>);
  });

  // ---- start requests --------------------------------------------------------------------------

  app.get('/v1/requests', async (c) => {
    const p = c.get('principal');
    const forWhom = c.req.query('for') ?? 'me';
    if (forWhom !== 'me' && forWhom !== 'approver') throw new BrokerError('invalid_request', 'for must be me or approver', { details: [{ path: 'for', message: 'must be me or approver' }] });
    const list = forWhom === 'me' ? await requests().recentOf(p.id) : await requests().listForApprover(p);
    return c.json({ requests: list.map(view) } satisfies Body<typeof startRequestsResponse>);
  });

  app.get('/v1/requests/:id', async (c) => {
    const r = await requests().get(c.get('principal'), requestId(c));
    return c.json({ request: view(r) } satisfies Body<typeof startRequestResponse>);
  });

  app.delete('/v1/requests/:id', async (c) => {
    const r = await requests().cancel(c.get('principal'), requestId(c));
    deps.log.info({ developer: c.get('principal').id, request: r.id }, 'start request cancelled');
    return c.json({ request: view(r) } satisfies Body<typeof startRequestResponse>);
  });

  // A decision from a terminal: attributed to whoever logs in at the IdP, not to the bearer.
  app.post('/v1/requests/:id/confirmations', async (c) => {
    const body = await parseBody(c, startConfirmationRequest);
    rateLimited(c);
    if (!deps.confirmations) throw new BrokerError('not_found', 'this service has no device confirmations');
    const r = await requests().get(c.get('principal'), requestId(c));
    const confirmation = await deps.confirmations.start(r, body.decision, body.reason);
    c.header('cache-control', 'no-store');
    return c.json({ confirmation, request: view(r) } satisfies Body<typeof deviceConfirmationResponse>, 201);
  });

  app.get('/v1/requests/:id/confirmations/:cid', async (c) => {
    if (!deps.confirmations) throw new BrokerError('not_found', 'this service has no device confirmations');
    const id = requestId(c);
    let status: Body<typeof confirmationStatusResponse>['status'];
    try {
      status = await deps.confirmations.poll(id, c.req.param('cid'));
    } catch (e) {
      // A login not fresh enough: the request still waits, shown as a start that needs confirmation is.
      const r = isBrokerError(e) && e.stepUpMaxAgeSeconds !== undefined ? await requests().find(id) : undefined;
      if (!r) throw e;
      c.header('WWW-Authenticate', stepUpChallenge((e as BrokerError).message, r.maxAgeSeconds));
      return c.json({ ...(e as BrokerError).toJSON(), code: 'confirmation_required', request: view(r) } satisfies Body<typeof confirmationRequiredBody>, 401);
    }
    const r = await requests().find(id);
    if (!r) throw new BrokerError('not_found', `no start request ${id}`);
    return c.json({ status, request: view(r) } satisfies Body<typeof confirmationStatusResponse>);
  });

  // ---- the control plane -----------------------------------------------------------------------

  const admin = () => {
    if (!deps.admin) throw new BrokerError('not_found', 'this service has no admin API');
    return deps.admin;
  };
  // Every admin route, present and future, behind one check: a bearer of a live login (above) who
  // is an admin; anyone else gets 403 `forbidden`, audited (test/admin-api.test.ts calls every
  // route of app.routes under /v1/admin as a non-admin).
  app.use('/v1/admin/*', async (c, next) => {
    await admin().requireAdmin(c.get('principal'), `${c.req.method} ${c.req.path.slice(0, 200)}`);
    await next();
  });

  app.get('/v1/admin/sessions', async (c) => {
    const sessions = await admin().listSessions(c.get('principal'), sessionFilter(c.req.query(), (deps.now ?? Date.now)()));
    return c.json({ sessions } satisfies Body<typeof adminSessionsResponse>);
  });

  app.get('/v1/admin/sessions/:id', async (c) => {
    const r = await admin().session(c.get('principal'), c.req.param('id'));
    return c.json({ session: r.session, history: r.history.map(recordBody) } satisfies Body<typeof adminSessionResponse>);
  });

  app.post('/v1/admin/sessions/end', async (c) => {
    const body = await parseBody(c, adminEndRequest);
    const selector = body.sessions ? { sessions: body.sessions } : body.developer ? { developer: body.developer } : { template: body.template! };
    const r = await admin().end(c.get('principal'), selector, body.reason);
    return c.json(endedBody(r) satisfies Body<typeof adminEndResponse>);
  });

  app.post('/v1/admin/offboard', async (c) => {
    const body = await parseBody(c, adminOffboardRequest);
    const r = await admin().offboard(c.get('principal'), body.developer, body.reason);
    return c.json({
      ...endedBody(r), developer: r.developer, loginsRevoked: r.loginsRevoked, requestsCancelled: r.requestsCancelled,
    } satisfies Body<typeof adminOffboardResponse>);
  });

  app.post('/v1/admin/freeze', async (c) => {
    const body = await parseBody(c, adminFreezeRequest);
    const r = await admin().freeze(c.get('principal'), body.all ? ALL_TEMPLATES : body.template!, body.reason, body.revoke);
    return c.json({ ...endedBody(r), freeze: freezeBody(r.freeze) } satisfies Body<typeof adminFreezeResponse>);
  });

  app.post('/v1/admin/unfreeze', async (c) => {
    const body = await parseBody(c, adminUnfreezeRequest);
    const scope = body.all ? ALL_TEMPLATES : body.template!;
    const left = await admin().unfreeze(c.get('principal'), scope, body.reason);
    return c.json({ unfrozen: { scope }, freezes: left.map(freezeBody) } satisfies Body<typeof adminUnfreezeResponse>);
  });

  app.post('/v1/admin/reload', async (c) => {
    const body = await parseBody(c, adminReloadRequest);
    if (!deps.reload) throw new BrokerError('not_found', 'this service cannot reload its templates');
    const r = await deps.reload({ trigger: 'admin', admin: c.get('principal').id, reason: body.reason });
    const { trigger: _trigger, ...result } = r;
    return c.json(result satisfies Body<typeof adminReloadResponse>);
  });

  app.get('/v1/admin/freezes', async (c) => c.json({ freezes: (await admin().freezes()).map(freezeBody) } satisfies Body<typeof adminFreezesResponse>));

  // The principal chain behind an AccessKeyId, a session, a developer… or the raw records (README,
  // "Incident response"); paged by seq.
  app.get('/v1/admin/audit', async (c) => {
    const r = await admin().readAudit(c.get('principal'), auditQuery(c));
    return c.json(r satisfies Body<typeof adminAuditResponse>);
  });

  app.get('/v1/admin/status', async (c) => {
    const r = await admin().status();
    return c.json({
      ...r, freezes: r.freezes.map(freezeBody),
      revocationWarnings: r.revocationWarnings.map((w) => ({ ...w, since: new Date(w.since).toISOString() })),
      auditSinks: r.auditSinks.map((s) => ({
        id: s.id, type: s.type, deliveredSeq: s.deliveredSeq, backlog: s.backlog,
        ...(s.lastError ? { lastError: s.lastError } : {}),
        ...(s.lastDeliveredAt !== undefined ? { lastDeliveredAt: new Date(s.lastDeliveredAt).toISOString() } : {}),
      })),
    } satisfies Body<typeof adminStatusResponse>);
  });

  return app;
}
