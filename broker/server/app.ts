import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { z } from 'zod';
import { BrokerError, isBrokerError } from '../errors.js';
import type { BrokerTokens } from '../identity/broker-tokens.js';
import type { DpopVerifier } from '../identity/dpop-verifier.js';
import { idTokenFailureReason, type IdTokenVerifier } from '../identity/id-token-verifier.js';
import type { Principal } from '../identity/principal.js';
import { TAG_VALUE_RE } from '../limits.js';
import type { Logger } from '../log.js';
import type { IssuedCredentials, IssuedVaultToken, TaskSessionService } from '../sessions/task-session-service.js';
import type { SqliteStore } from '../store/sqlite-store.js';
import { parseSessionTtl, SESSION_TTL_RANGE_MESSAGE } from '../templates/durations.js';
import { PARAM_NAME_RE, TEMPLATE_NAME_RE } from '../templates/schema.js';
import { bodyIssueDetails } from './json-pointer.js';
import { RateLimiter } from './rate-limit.js';

export interface AppDeps {
  tokens: BrokerTokens;
  idTokens: IdTokenVerifier;
  dpop: DpopVerifier;
  /** The URL clients reach the service at (DPoP proofs name it, RFC 9449 §4.2 `htu`); known once listening. */
  publicUrl: () => string;
  sessions: TaskSessionService;
  store: SqliteStore;
  log: Logger;
  loginConfig: { issuer: string; clientId: string; scopes: string; allowInsecureHttp: boolean };
  issuePerMinute: number;
  now?: () => number;
}

type Env = { Variables: { principal: Principal } };

/** Printable text without control characters (they would garble logs and terminals). */
const printable = (max: number) => z.string().max(max).regex(/^[^\p{Cc}]*$/u, 'must not contain control characters');

// Becomes the broker:agent session tag, so it must fit STS's tag value charset and length.
const agentName = z.string().min(1).max(256).regex(TAG_VALUE_RE, 'must use only letters, digits, spaces and _.:/=+-@ (STS tag charset)');

const startBody = z.strictObject({
  template: z.string().regex(TEMPLATE_NAME_RE, 'must be a template name ([a-z0-9-], at most 40 chars)'),
  params: z.record(z.string().regex(PARAM_NAME_RE, 'invalid parameter name'), z.string().max(1024)).default({}),
  reason: printable(512).default(''),
  // The one rule shared with `broker policy explain` (templates/durations.ts).
  ttl: z.union([z.string(), z.number()]).optional().transform((v, ctx) => {
    if (v === undefined) return undefined;
    const s = parseSessionTtl(v);
    if (s === undefined) {
      ctx.addIssue({ code: 'custom', message: SESSION_TTL_RANGE_MESSAGE });
      return z.NEVER;
    }
    return s;
  }),
  agent: agentName.default('unspecified'),
});

const updateBody = z.strictObject({ agent: agentName });

const idTokenBody = z.strictObject({ id_token: z.string().min(1).max(20_000) });
const refreshBody = z.strictObject({ refresh_token: z.string().min(1).max(8_000) });

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

function credentialsBody(r: IssuedCredentials) {
  const c = r.credentials;
  return {
    session: r.session,
    ...(c ? {
      credentials: {
        Version: 1,
        AccessKeyId: c.accessKeyId,
        SecretAccessKey: c.secretAccessKey,
        SessionToken: c.sessionToken,
        Expiration: c.expiration.toISOString(),
        ...(c.accountId ? { AccountId: c.accountId } : {}),
      },
    } : {}),
    ...(r.vault ? { vault: vaultBody(r.vault) } : {}),
  };
}

/** The `vault` object of a response: the token for the daemon, and what it needs to renew it. */
function vaultBody(v: IssuedVaultToken) {
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

/**
 * The service's HTTP API. One error path: BrokerError → `{code, message, hint?, details?}` with the
 * code's status; anything else → a generic 500 whose detail stays in the server log.
 */
export function createApp(deps: AppDeps): Hono<Env> {
  const app = new Hono<Env>();
  const limiter = new RateLimiter(deps.issuePerMinute, deps.now);

  app.onError((err, c) => {
    if (isBrokerError(err)) {
      if (err.status >= 500) deps.log.warn({ code: err.code, msg: err.message, cause: (err.cause as Error)?.message }, 'request failed');
      if (err.code === 'unauthenticated') c.header('WWW-Authenticate', 'Bearer error="invalid_token"');
      return c.json(err.toJSON(), err.status as 400);
    }
    deps.log.error({ err: (err as Error).message, stack: (err as Error).stack }, 'unhandled error');
    return c.json({ code: 'internal', message: 'internal error' }, 500);
  });
  app.notFound((c) => c.json({ code: 'not_found', message: `no route ${c.req.method} ${c.req.path}` }, 404));

  app.use('*', bodyLimit({
    maxSize: 64 * 1024,
    onError: () => { throw new BrokerError('invalid_request', 'request body larger than 64 KiB'); },
  }));

  app.get('/healthz', (c) => c.json({ ok: true }));
  app.get('/.well-known/jwks.json', (c) => c.json(deps.tokens.publicJwks()));
  app.get('/v1/login-config', (c) => c.json(deps.loginConfig));

  const dpopJkt = (c: Context, path: string) => deps.dpop.verify(c.req.header('dpop'), { method: c.req.method, url: `${deps.publicUrl()}${path}` });

  // Exchange an IdP ID token for broker tokens. With a DPoP proof (RFC 9449 §5) the response also
  // carries a refresh token bound to the proof's key; without one, only a short access token.
  app.post('/v1/auth/token', async (c) => {
    const { id_token } = await parseBody(c, idTokenBody);
    let principal: Principal;
    try {
      principal = await deps.idTokens.verify(id_token);
    } catch (e) {
      if (isBrokerError(e) && e.code === 'unauthenticated') {
        const reason = idTokenFailureReason(e.cause);
        try { deps.store.audit({ event: 'login', decision: 'denied', reason: `ID token rejected: ${reason}` }); } catch { /* denial stands */ }
        deps.log.info({ reason }, 'login denied');
      }
      throw e;
    }
    const jkt = c.req.header('dpop') === undefined ? undefined : await dpopJkt(c, '/v1/auth/token');
    const tokens = await deps.tokens.issue(principal, jkt);
    deps.store.audit({ event: 'login', decision: 'allowed', developer: principal.id, detail: { groups: principal.groups, keyBound: jkt !== undefined } });
    return c.json({
      access_token: tokens.accessToken, ...(tokens.refreshToken ? { refresh_token: tokens.refreshToken } : {}), token_type: 'Bearer',
      expires_in: tokens.accessTokenExpiresIn, developer: principal.id, groups: principal.groups,
    });
  });

  // A refresh token is only honoured with a proof from the key it is bound to (RFC 9449 §5).
  app.post('/v1/auth/refresh', async (c) => {
    const { refresh_token } = await parseBody(c, refreshBody);
    let r;
    try {
      r = await deps.tokens.refresh(refresh_token, await dpopJkt(c, '/v1/auth/refresh'));
    } catch (e) {
      if (isBrokerError(e) && e.code === 'unauthenticated') {
        const reason = (e.cause as Error | undefined)?.message ?? e.message;
        try { deps.store.audit({ event: 'token.refresh', decision: 'denied', reason: `${e.message}: ${reason}` }); } catch { /* denial stands */ }
        deps.log.info({ reason }, 'refresh denied');
      }
      throw e;
    }
    deps.store.audit({ event: 'token.refresh', decision: 'allowed', developer: r.principal.id });
    return c.json({ access_token: r.accessToken, token_type: 'Bearer', expires_in: r.accessTokenExpiresIn, developer: r.principal.id });
  });

  // Everything under /v1 below needs a broker access token (RFC 6750 bearer).
  app.use('/v1/*', async (c, next) => {
    const h = c.req.header('authorization') ?? '';
    const m = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/.exec(h);
    if (!m) throw new BrokerError('unauthenticated', 'missing bearer token', { hint: 'run: broker login' });
    c.set('principal', await deps.tokens.verifyAccess(m[1]!));
    await next();
  });

  const rateLimited = (c: Context<Env>) => {
    const retry = limiter.take(c.get('principal').id);
    if (retry > 0) {
      c.header('Retry-After', String(retry));
      throw new BrokerError('rate_limited', `too many credential requests; retry in ${retry}s`);
    }
  };

  app.get('/v1/whoami', (c) => c.json(c.get('principal')));

  app.get('/v1/templates', (c) => c.json({
    templates: deps.sessions.startableTemplates(c.get('principal')).map((t) => ({
      name: t.name, description: t.description, region: t.aws?.region ?? null,
      grants: [...(t.aws ? ['aws'] : []), ...(t.vault ? ['vault'] : [])],
      parameters: Object.fromEntries(t.parameters.map((p) => [p.name, { description: p.description ?? '', pattern: p.pattern, maxLength: p.maxLength }])),
      maxSessionSeconds: t.maxSessionSeconds, credentialLifetimeSeconds: t.credentialLifetimeSeconds,
    })),
  }));

  app.get('/v1/sessions', (c) => c.json({ sessions: deps.sessions.list(c.get('principal')) }));

  app.post('/v1/sessions', async (c) => {
    const body = await parseBody(c, startBody);
    rateLimited(c);
    const r = await deps.sessions.start(c.get('principal'), {
      template: body.template, params: body.params, reason: body.reason, agent: body.agent, ttlSeconds: body.ttl,
    });
    // The AccessKeyId and the Vault accessor identify what was issued; never the secrets.
    deps.log.info({
      developer: c.get('principal').id, template: body.template, session: r.session.id,
      accessKeyId: r.credentials?.accessKeyId, vaultAccessor: r.vault?.accessor,
    }, 'task session started');
    c.header('cache-control', 'no-store');
    return c.json(credentialsBody(r), 201);
  });

  app.post('/v1/sessions/:id/credentials', async (c) => {
    rateLimited(c);
    const r = await deps.sessions.reissue(c.get('principal'), c.req.param('id'));
    deps.log.info({ developer: c.get('principal').id, session: r.session.id, accessKeyId: r.credentials.accessKeyId }, 'credentials re-issued');
    c.header('cache-control', 'no-store');
    return c.json(credentialsBody(r));
  });

  // Which agent works under the session (`broker exec` names it): credentials issued from now on carry
  // it as their broker:agent tag; the change is audited.
  app.patch('/v1/sessions/:id', async (c) => {
    const body = await parseBody(c, updateBody);
    const s = deps.sessions.setAgent(c.get('principal'), c.req.param('id'), body.agent);
    return c.json({ session: s });
  });

  // A fresh Vault token under an active session (the daemon's fallback when renewal fails).
  app.post('/v1/sessions/:id/vault-token', async (c) => {
    rateLimited(c);
    const r = await deps.sessions.reissueVaultToken(c.get('principal'), c.req.param('id'));
    deps.log.info({ developer: c.get('principal').id, session: r.session.id, vaultAccessor: r.vault.accessor }, 'Vault token re-issued');
    // Responses that carry secrets are never stored by a cache (as for OAuth token responses, RFC 6749 §5.1).
    c.header('cache-control', 'no-store');
    return c.json({ session: r.session, vault: vaultBody(r.vault) });
  });

  app.delete('/v1/sessions/:id', async (c) => {
    const r = await deps.sessions.end(c.get('principal'), c.req.param('id'));
    const pending = r.vaultTokens.filter((t) => !t.revoked).length;
    deps.log.info({ developer: c.get('principal').id, session: r.session.id, vaultTokensRevoked: r.vaultTokens.length - pending, vaultTokensPending: pending }, 'task session ended');
    return c.json({ ended: r.session, vaultTokens: r.vaultTokens });
  });

  return app;
}
