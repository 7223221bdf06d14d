import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { durationSchema, formatDuration } from '../duration.js';
import { BrokerError, type ErrorDetail } from '../errors.js';
import { BROKER_TOKEN_AUDIENCE } from '../identity/broker-tokens.js';
import { brokerUrlProblem, isLoopbackHost, localhostFix, LOOPBACK_RULE } from '../limits/urls.js';
import { VAULT_ROLE_NAME_RE } from '../limits/vault.js';

const JWS_ALGS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;

const signingKeySchema = z.union([
  z.strictObject({ file: z.string().min(1) }),
  z.strictObject({ env: z.string().regex(/^[A-Z_][A-Z0-9_]*$/) }),
]);
/** A secret is named by where it is (a file, an environment variable), never written in the config. */
const secretSourceSchema = signingKeySchema;

/** An auth method's mount path, e.g. `approle` or `jwt` or `team-a/jwt`. */
const mountSchema = z.string().regex(/^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/, 'must be a mount path such as jwt or approle (no leading or trailing /)');

/** A token bucket of `limits.auth`: up to `burst` requests at once, refilled at `perMinute`. */
const bucketSchema = (burst: number, perMinute: number) => z.strictObject({
  burst: z.number().int().min(1).max(100_000).default(burst),
  perMinute: z.number().int().min(1).max(1_000_000).default(perMinute),
}).prefault({});

/** Seconds as written in the config: whole days as `7d`, else `1h30m`. */
const asWritten = (s: number) => (s > 0 && s % 86_400 === 0 ? `${s / 86_400}d` : formatDuration(s));

/** A duration between `min` and `max` seconds, saying the bound and the fix when outside. */
const boundedDuration = (fallback: number, min: number, max: number, why: string) => durationSchema.default(fallback).superRefine((s, ctx) => {
  if (s < min || s > max) ctx.addIssue({ code: 'custom', message: `is ${asWritten(s)}; it must be between ${asWritten(min)} and ${asWritten(max)} (${why})` });
});

/**
 * The IdP's issuer must be https: the broker fetches the keys that decide who anyone is from it
 * (OIDC Discovery §3 requires an https issuer; RFC 6749 §3.1 TLS for the endpoints), and the CLI's
 * device flow gets tokens from it. Plain http only for an IdP on this machine, and only when asked
 * for: the same rule the CLI applies to the issuer it is given (broker/client/device-login.ts), with
 * loopback as broker/limits/urls.ts decides it.
 */
function issuerProblem(issuer: string, allowInsecureHttp: boolean): string | undefined {
  let u: URL;
  try {
    u = new URL(issuer);
  } catch {
    return undefined; // z.url() reported it
  }
  if (u.protocol === 'https:') return undefined;
  if (u.protocol !== 'http:') return `must be an https URL (got ${u.protocol}), e.g. https://login.example.com`;
  if (!isLoopbackHost(u.hostname)) {
    if (u.hostname === 'localhost') return `is plain http to localhost, which can resolve to another machine; ${localhostFix(u)}`;
    return `plain http to an IdP that is not on loopback (${u.hostname}) would let anyone on the path swap the keys that verify identities; use the IdP's https issuer URL (allowInsecureHttp permits only a loopback IdP: ${LOOPBACK_RULE})`;
  }
  if (!allowInsecureHttp) return 'is plain http; use the IdP\'s https issuer URL, or, for a development IdP on this machine, set oidc.allowInsecureHttp: true';
  return undefined;
}

/** For a host named localhost, that it does not count as loopback (broker/limits/urls.ts says why). */
function notLocalhost(u: URL): string {
  return u.hostname === 'localhost' ? ' (localhost does not count: write 127.0.0.1)' : '';
}

/**
 * Vault/OpenBao (docs/vault.md). The broker's own login is exactly one of `token` (development),
 * `approle` or `jwt`; none has a default, like every security-critical setting here.
 */
const vaultSchema = z.strictObject({
  address: z.url().refine((u) => /^https?:/.test(u), 'must be an http(s) URL, e.g. https://vault.example.com:8200'),
  namespace: z.string().min(1).optional(),
  /** The token role task tokens are created against; a template's vault.tokenRole overrides it. */
  tokenRole: z.string().regex(VAULT_ROLE_NAME_RE, 'must be a Vault token role name (letters, digits, _ - .)'),
  token: secretSourceSchema.optional(),
  approle: z.strictObject({ roleId: z.string().min(1), secretId: secretSourceSchema, mount: mountSchema.default('approle') }).optional(),
  jwt: z.strictObject({
    role: z.string().min(1),
    mount: mountSchema.default('jwt'),
    /** The `aud` of the broker's login JWT; the JWT auth role's bound_audiences. */
    audience: z.string().min(1).refine((a) => a !== BROKER_TOKEN_AUDIENCE, `must differ from "${BROKER_TOKEN_AUDIENCE}", the audience of the broker's own access tokens`),
  }).optional(),
  /** Development only: run with a broker token that has Vault's root policy. */
  allowRootToken: z.boolean().default(false),
  /**
   * Development only: run (with a loud warning) against a token role that is not orphan or has no
   * token_explicit_max_ttl of at most 12h (broker/vault/token-role-safety.ts).
   */
  allowUnsafeTokenRole: z.boolean().default(false),
  /** Plain http to a Vault that is not on loopback (tokens would cross the network in clear). */
  allowInsecureHttp: z.boolean().default(false),
  requestTimeoutMs: z.number().int().min(100).max(60_000).default(5000),
}).superRefine((v, ctx) => {
  const methods = (['token', 'approle', 'jwt'] as const).filter((k) => v[k] !== undefined);
  if (methods.length !== 1) {
    ctx.addIssue({
      code: 'custom', path: [],
      message: methods.length ? `set exactly one of token, approle, jwt (found ${methods.join(', ')})`
        : "set the broker's own Vault login: one of token: {file|env}, approle: {roleId, secretId}, jwt: {role, audience}",
    });
  }
  try {
    const u = new URL(v.address);
    if (u.protocol === 'http:' && !isLoopbackHost(u.hostname) && !v.allowInsecureHttp) {
      ctx.addIssue({
        code: 'custom', path: ['address'],
        message: u.hostname === 'localhost'
          ? `is plain http to localhost, which can resolve to another machine; ${localhostFix(u)}`
          : 'plain http to a Vault that is not on loopback would send tokens in clear; use https (or set allowInsecureHttp: true)',
      });
    }
    // A root token is for a local dev server (`bao server -dev`); a broker pointed at any other Vault
    // with one could mint tokens with every policy, so the escape hatch only exists on loopback.
    if (v.allowRootToken && !isLoopbackHost(u.hostname)) {
      ctx.addIssue({
        code: 'custom', path: ['allowRootToken'],
        message: `is only accepted for a Vault on loopback (a local dev server), and vault.address is ${u.host}${notLocalhost(u)}; give the broker a login with only deploy/vault/broker-policy.hcl (jwt or approle) and remove allowRootToken`,
      });
    }
    // The same for an unsafe token role: on a shared Vault its tokens are ones an agent can renew
    // past the end of its task.
    if (v.allowUnsafeTokenRole && !isLoopbackHost(u.hostname)) {
      ctx.addIssue({
        code: 'custom', path: ['allowUnsafeTokenRole'],
        message: `is only accepted for a Vault on loopback (a local dev server), and vault.address is ${u.host}${notLocalhost(u)}; make the token role safe (bao write auth/token/roles/<role> orphan=true token_explicit_max_ttl=12h) and remove allowUnsafeTokenRole`,
      });
    }
  } catch { /* z.url() reported it */ }
});

/** A receiver's URL (a webhook, an OTLP sink): https, or plain http to loopback only (broker/limits/urls.ts). */
function requireHttpsOrLoopback(u: URL, ctx: z.RefinementCtx, fix: `; ${string}` | `, ${string}`): void {
  if (u.protocol === 'https:') return;
  if (u.protocol === 'http:' && isLoopbackHost(u.hostname)) return;
  ctx.addIssue({
    code: 'custom',
    message: u.protocol === 'http:' && u.hostname === 'localhost'
      ? `is plain http to localhost, which can resolve to another machine; ${localhostFix(u)}`
      : `must be https (plain http only to ${LOOPBACK_RULE})${fix}`,
  });
}

/** The events a webhook may receive (broker/notify). */
export const NOTIFY_EVENTS = ['request.created', 'request.decided', 'request.expired', 'break_glass'] as const;

/** HTTP headers to send (a webhook's, an OTLP sink's): each value read from the environment or a file, never written in the config. */
const headersFromSecretsSchema = z.record(
  z.string().regex(/^[A-Za-z0-9-]{1,64}$/, 'must be an HTTP header name (letters, digits, -)'),
  z.union([
    z.strictObject({ env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be an environment variable name') }),
    z.strictObject({ file: z.string().min(1) }),
  ], { error: 'must be {env: NAME} or {file: path} (a header value is never written in the config)' }),
).default({});

/**
 * A webhook receiver. Its URL is a secret of its own (a Slack incoming-webhook URL is the
 * credential), so it is never logged beyond its host; https, or plain http to loopback only.
 * Header values come from an environment variable or a file, never inline in the config.
 */
const webhookSchema = z.strictObject({
  url: z.url().superRefine((raw, ctx) => {
    let u: URL;
    try { u = new URL(raw); } catch { return; }
    requireHttpsOrLoopback(u, ctx, "; give the receiver's https URL");
  }),
  format: z.enum(['generic', 'slack']).default('generic'),
  events: z.array(z.enum(NOTIFY_EVENTS)).min(1).default([...NOTIFY_EVENTS]),
  headers: headersFromSecretsSchema,
});

export const notificationsSchema = z.strictObject({
  webhooks: z.array(webhookSchema).max(20).default([]),
}).prefault({});
export type NotificationsConfig = z.infer<typeof notificationsSchema>;

/** An audit sink's own name: its cursor is kept under it, so renaming a sink feeds it the whole log again. */
const sinkIdSchema = z.string().regex(/^[A-Za-z0-9_.:-]{1,64}$/, 'must be 1-64 letters, digits, _ . : -');
/** Records per delivery: bounds the memory and event-loop time one batch takes. */
const batchSizeSchema = z.number().int().min(1).max(5000).default(500);

/**
 * The OTLP/HTTP logs endpoint, used as written (e.g. https://collector.example.com:4318/v1/logs).
 * Audit records name people and AccessKeyIds, so they travel over https, or plain http to loopback
 * (a collector on this machine); no credentials in the URL (they would be logged with it).
 */
const otlpEndpointSchema = z.url().superRefine((raw, ctx) => {
  let u: URL;
  try { u = new URL(raw); } catch { return; }
  if (u.username || u.password) {
    ctx.addIssue({ code: 'custom', message: 'must not hold credentials; give them as headers: {Authorization: {env: NAME}}' });
    return;
  }
  requireHttpsOrLoopback(u, ctx, ', e.g. https://collector.example.com:4318/v1/logs');
});

/**
 * Where audit records go besides the store (broker/sinks/, README "Export to a SIEM"): JSON lines
 * to a file or stdout, OTLP logs over HTTP. Header values (an API key) come from an environment
 * variable or a file, never inline in the config.
 */
const auditSinkSchema = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('jsonl'),
    id: sinkIdSchema.optional(),
    path: z.string().min(1),
    /** fdatasync before the cursor is written to the store (at most once a second): a record counted as delivered survives a power cut. */
    fsync: z.boolean().default(true),
    batchSize: batchSizeSchema,
  }),
  z.strictObject({ type: z.literal('stdout'), id: sinkIdSchema.optional(), batchSize: batchSizeSchema }),
  z.strictObject({
    type: z.literal('otlp'),
    id: sinkIdSchema.optional(),
    endpoint: otlpEndpointSchema,
    headers: headersFromSecretsSchema,
    /** One export, the exporter's own retries included. */
    timeoutMs: z.number().int().min(100).max(120_000).default(10_000),
    batchSize: batchSizeSchema,
  }),
], { error: 'must have type jsonl (path), stdout, or otlp (endpoint)' });
export type AuditSinkConfig = z.infer<typeof auditSinkSchema>;

/** The id a sink is known by (its cursor's key): given, or derived from what it writes to. */
export function sinkId(s: AuditSinkConfig): string {
  if (s.id) return s.id;
  if (s.type === 'jsonl') return `jsonl:${s.path}`;
  if (s.type === 'otlp') return `otlp:${s.endpoint}`;
  return 'stdout';
}

export const auditSchema = z.strictObject({
  /**
   * The audit log's signed checkpoints (README, "Audit log"): one every `everyRecords` records or
   * `everySeconds` (when there is anything new), signed with the first of `signingKeys` (its own
   * key, not a token key; all verify, so it rotates like them). Without signingKeys no checkpoint
   * is written (tampering that recomputes the chain or cuts its tail then goes unseen).
   */
  checkpoints: z.strictObject({
    everyRecords: z.number().int().min(1).max(1_000_000).default(100),
    everySeconds: boundedDuration(60, 1, 86_400, 'e.g. 60s'),
  }).prefault({}),
  signingKeys: z.union([z.literal('ephemeral'), z.array(signingKeySchema).min(1)]).optional(),
  /** Where records go besides the store (above). */
  sinks: z.array(auditSinkSchema).max(16).default([]),
}).superRefine((a, ctx) => {
  const seen = new Map<string, number>();
  a.sinks.forEach((s, i) => {
    const id = sinkId(s);
    const first = seen.get(id);
    if (first !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['sinks', i], message: `is the same sink as sinks.${first} (id ${id}); remove one, or give each its own id` });
    } else seen.set(id, i);
  });
}).prefault({});

/**
 * The service configuration. Security-critical settings (issuer, audience, algorithms) have no
 * defaults: a broker that guessed them would accept tokens nobody meant it to.
 */
export const serverConfigSchema = z.strictObject({
  listen: z.strictObject({
    host: z.string().default('127.0.0.1'),
    port: z.number().int().min(0).max(65535).default(8787),
    /**
     * How long a client may take to send a request's headers, and the whole request (node:http
     * `headersTimeout`, `requestTimeout`; the time the service then takes to answer does not
     * count). Node's defaults (60 s, 5 min) let a client hold a connection for minutes with a byte
     * now and then (slowloris); a broker request is at most 64 KiB and its headers fit in a packet.
     */
    headersTimeoutMs: z.number().int().min(500).max(60_000).default(10_000),
    requestTimeoutMs: z.number().int().min(500).max(300_000).default(30_000),
    /** Idle time before a kept-alive connection is closed; behind a load balancer, above its idle timeout. */
    keepAliveTimeoutMs: z.number().int().min(1000).max(600_000).default(5_000),
  }).refine((l) => l.headersTimeoutMs <= l.requestTimeoutMs, {
    // node:http refuses a headers timeout longer than the request timeout (server.headersTimeout).
    path: ['headersTimeoutMs'], message: 'must not exceed listen.requestTimeoutMs (the headers are part of the request)',
  }).prefault({}),
  /**
   * Base URL clients use; also the `iss` of broker tokens and the `htu` DPoP proofs are checked
   * against. https, or plain http to loopback (broker/limits/urls.ts). Defaults to http://host:port.
   */
  publicUrl: z.url().superRefine((url, ctx) => {
    const p = brokerUrlProblem(url);
    if (p) ctx.addIssue({ code: 'custom', message: `${p.problem}; ${p.fix}` });
  }).optional(),
  policiesDir: z.string().default('policies'),
  /**
   * Reload the templates when a file in policiesDir changes (templates/watch.ts); SIGHUP reloads
   * either way. Off where the directory's filesystem reports no changes (some network mounts).
   */
  policiesWatch: z.boolean().default(true),
  store: z.strictObject({
    sqlite: z.string().default('broker.db'),
    /** How long a write waits for a lock before the store is declared unavailable (fail closed). */
    busyTimeoutMs: z.number().int().min(0).max(60_000).default(2000),
  }).prefault({}),
  oidc: z.strictObject({
    issuer: z.url(),
    audience: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
    algorithms: z.array(z.enum(JWS_ALGS)).min(1),
    /** The client the CLI uses for the device authorization grant (RFC 8628). */
    cliClientId: z.string().min(1),
    scopes: z.string().default('openid email profile'),
    groupsClaim: z.string().default('groups'),
    identityClaim: z.string().default('email'),
    /** Plain-http issuer allowed (loopback development IdPs only). */
    allowInsecureHttp: z.boolean().default(false),
    clockToleranceSeconds: z.number().int().min(0).max(300).default(30),
    /** The oldest an ID token may be (since its `iat`) to log in with, however long it stays unexpired. */
    maxIdTokenAge: boundedDuration(600, 60, 86_400, 'an ID token is for logging in now; e.g. 10m'),
    /** The client of the service's own page (authorization code + PKCE, RFC 7636). */
    webClientId: z.string().min(1).default('broker-web'),
    /** A confidential page client's secret, in a file (never in the config); public client + PKCE without it. */
    webClientSecretFile: z.string().min(1).optional(),
  }).superRefine((o, ctx) => {
    const problem = issuerProblem(o.issuer, o.allowInsecureHttp);
    if (problem) ctx.addIssue({ code: 'custom', path: ['issuer'], message: problem });
  }),
  tokens: z.strictObject({
    /** An access token is refused once its login is revoked, but STS credentials it bought live on: keep it short. */
    accessTokenTtl: boundedDuration(600, 10, 3600, 'set it to 1h or less, e.g. 10m'),
    /** A login's absolute lifetime: rotation never extends it (README, "Login lifecycle"). */
    refreshTokenTtl: boundedDuration(12 * 3600, 300, 7 * 86_400, 'a login lasts at most 7d; set e.g. 12h'),
    /**
     * Private JWKs (with `kid`) the broker signs its tokens with; the first signs, all verify, so a
     * key can be rotated in by putting it first and rotated out once its tokens have expired.
     * `ephemeral` generates one in memory at start (tokens die with the process).
     */
    signingKeys: z.union([z.literal('ephemeral'), z.array(signingKeySchema).min(1)]),
  }),
  aws: z.strictObject({
    region: z.string().min(1).default('us-east-1'),
    stsEndpoint: z.url().optional(),
    iamEndpoint: z.url().optional(),
    /**
     * Bound on one AssumeRole, the SDK's retries included. Under the CLI's and daemon's 15 s request
     * timeout (with a Vault call before it), so a hung STS reaches them as a clear error.
     */
    requestTimeoutMs: z.number().int().min(500).max(10_000).default(8_000),
    checkTrustAtStartup: z.boolean().default(true),
    /**
     * How templates that name no aws.via get their credentials: AssumeRole with the broker's own AWS
     * credentials, or AssumeRoleWithWebIdentity with a token the broker signs (README, "A broker
     * without AWS keys"), which needs `webIdentity`.
     */
    via: z.enum(['assume-role', 'web-identity'], { error: 'must be assume-role or web-identity' }).default('assume-role'),
    /**
     * The broker as an OIDC issuer for AWS: private JWKs of its own (never the tokens' keys; the first
     * signs, all are published, so they rotate like them), or `ephemeral` (development and tests:
     * AWS would have to fetch the new keys after every restart).
     */
    webIdentity: z.strictObject({
      signingKeys: z.union([z.literal('ephemeral'), z.array(signingKeySchema).min(1)]),
    }).optional(),
  }).superRefine((a, ctx) => {
    if (a.via === 'web-identity' && !a.webIdentity) {
      ctx.addIssue({ code: 'custom', path: ['webIdentity'], message: 'is missing, and aws.via is web-identity: set aws.webIdentity.signingKeys (a list of {file} or {env} private JWKs, generated with broker server keygen)' });
    }
  }).prefault({}),
  vault: vaultSchema.optional(),
  /**
   * Human confirmation of task starts (README, "Confirmation"): the mode of templates that name
   * none, how recent the IdP login of a decision must be (0: a login for that decision), and how
   * long a start request waits for its humans.
   */
  confirm: z.strictObject({
    default: z.enum(['none', 'self', 'approvers'], { error: 'must be none, self or approvers' }).default('self'),
    maxAge: durationSchema.default(300).refine((s) => s <= 86_400, 'must be at most 1d (a confirmation proves a human now; e.g. 5m, or 0 for a fresh login)'),
    timeout: durationSchema.default(900).refine((s) => s >= 60 && s <= 7 * 86_400, 'must be between 1m and 7d, e.g. 15m'),
  }).prefault({}),
  /** Ends expired task sessions and retries revocations that failed (e.g. Vault was down). */
  sweeper: z.strictObject({
    interval: durationSchema.default(60).refine((s) => s >= 1 && s <= 3600, 'must be between 1s and 1h'),
  }).prefault({}),
  limits: z.strictObject({
    /** Per-developer requests that can issue credentials, per minute. */
    issuePerMinute: z.number().int().min(1).default(30),
    /** Task sessions a developer may hold at once. */
    maxActiveSessions: z.number().int().min(1).default(20),
    /** The unauthenticated routes (`/v1/auth/*`): token buckets checked before any body or signature. */
    auth: z.strictObject({
      perAddress: bucketSchema(20, 60),
      global: bucketSchema(200, 6000),
      /** Per-address buckets kept at most (least recently used dropped first). */
      maxAddresses: z.number().int().min(100).max(1_000_000).default(10_000),
      /**
       * Reverse proxies in front of the service that append the client's address to
       * X-Forwarded-For; 0 (default): the TCP peer is the client. Never more than there are, or
       * clients choose their own address.
       */
      trustedProxyHops: z.number().int().min(0).max(5).default(0),
      /** Refusals nobody authenticated owns are audited once per reason and address per window, with a count. */
      auditWindow: boundedDuration(60, 1, 3600, 'e.g. 60s'),
      /** Keys (reason × address) per window before they fold into one `*` key. */
      auditMaxKeys: z.number().int().min(1).max(100_000).default(256),
    }).prefault({}),
  }).prefault({}),
  /**
   * Who may use the control plane (`/v1/admin/*`, `broker admin …`): members of these IdP groups,
   * or these IdP-verified emails. No default: without it nobody is an admin.
   */
  admins: z.strictObject({
    groups: z.array(z.string().min(1)).default([]),
    emails: z.array(z.string().regex(/^[^@\s]+@[^@\s]+$/, 'must be an email address')).default([]),
  }).prefault({}),
  notifications: notificationsSchema,
  /**
   * The Prometheus metrics (README, "Metrics"): on a listener of their own (`listen`: only
   * /metrics, no authentication, loopback unless a host is given), and/or as `GET /metrics` on the
   * main port for administrators (`adminRoute`).
   */
  metrics: z.strictObject({
    listen: z.strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: z.number().int().min(0).max(65535),
    }).optional(),
    adminRoute: z.boolean().default(true),
    /** Node's process metrics (process_*, nodejs_*) besides the broker's own. */
    processMetrics: z.boolean().default(true),
  }).prefault({}),
  audit: auditSchema,
  log: z.strictObject({ level: z.enum(['debug', 'info', 'warn', 'error']).default('info') }).prefault({}),
}).superRefine((c, ctx) => {
  const m = c.metrics.listen;
  if (m && m.port !== 0 && m.port === c.listen.port && (m.host === c.listen.host || ['0.0.0.0', '::'].includes(m.host) || ['0.0.0.0', '::'].includes(c.listen.host))) {
    ctx.addIssue({ code: 'custom', path: ['metrics', 'listen', 'port'], message: `is the port the API listens on (listen.port ${c.listen.port}); give the metrics listener a port of its own, e.g. 9464` });
  }
  // Without publicUrl, clients are told http://host:port: plain http, so only when that is loopback.
  // A service listening on every interface is reached through something else (a TLS-terminating
  // proxy or load balancer), whose https URL is the one clients must use.
  if (c.publicUrl !== undefined) return;
  const implied = listenUrl(c.listen.host, c.listen.port);
  if (brokerUrlProblem(implied) === undefined) return;
  ctx.addIssue({
    code: 'custom', path: ['publicUrl'],
    message: `is not set, so clients would be told ${implied} (from listen), plain http off this machine; set publicUrl to the https URL clients reach the service at, with TLS terminated in front of it (e.g. publicUrl: https://broker.example.com), or listen on 127.0.0.1`,
  });
});

/** The URL of a listening address: `http://127.0.0.1:8787`, `http://[::1]:8787`. */
export function listenUrl(host: string, port: number): string {
  return `http://${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
}

export type ServerConfig = z.infer<typeof serverConfigSchema> & { baseDir: string; publicUrl: string };

export function zodDetails(error: z.ZodError, prefix = ''): ErrorDetail[] {
  return error.issues.map((i) => ({
    path: `${prefix}${i.path.length ? i.path.map(String).join('.') : '(root)'}`,
    message: i.message,
  }));
}

export function parseServerConfig(raw: unknown, baseDir: string, source = 'config'): ServerConfig {
  const parsed = serverConfigSchema.safeParse(raw);
  if (!parsed.success) {
    throw new BrokerError('invalid_config', `${source}: invalid server configuration`, {
      details: zodDetails(parsed.error, `${source}:`),
      hint: 'see "Configuration" in README.md',
    });
  }
  const c = parsed.data;
  const publicUrl = (c.publicUrl ?? listenUrl(c.listen.host, c.listen.port)).replace(/\/$/, '');
  return {
    ...c,
    baseDir,
    publicUrl,
    policiesDir: resolve(baseDir, c.policiesDir),
    store: { ...c.store, sqlite: c.store.sqlite === ':memory:' ? ':memory:' : resolve(baseDir, c.store.sqlite) },
    // The id is derived from the path as written, so moving the config's directory keeps the cursor.
    audit: { ...c.audit, sinks: c.audit.sinks.map((s) => (s.type === 'jsonl' ? { ...s, id: sinkId(s), path: resolve(baseDir, s.path) } : { ...s, id: sinkId(s) })) },
  };
}

export function loadServerConfig(file: string): ServerConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new BrokerError('invalid_config', `cannot read config file ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, {
      hint: 'pass an existing file with --config',
    });
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (e) {
    throw new BrokerError('invalid_config', `${file}: not valid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  return parseServerConfig(raw, dirname(resolve(file)), file);
}
