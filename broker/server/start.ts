import { serve } from '@hono/node-server';
import { existsSync } from 'node:fs';
import type { ServerOptions } from 'node:http';
import { dirname } from 'node:path';
import type { AddressInfo } from 'node:net';
import { AdminService, type StsRevoker } from '../admin/admin-service.js';
import { makeIamClient, makeStsClient, makeUnsignedStsClient } from '../aws/clients.js';
import { IamRoleDenyPolicies } from '../aws/role-revocations.js';
import { StsCredentialIssuer } from '../aws/sts-issuer.js';
import { RoutedCredentialIssuer, WebIdentityCredentialIssuer } from '../aws/web-identity-issuer.js';
import { checkRoleTrust, resolveBrokerPrincipal } from '../aws/trust-check.js';
import { listenUrl, type ServerConfig } from '../config/server-config.js';
import { BrokerError } from '../errors.js';
import { BrokerTokens, loadSigningKeys, type SigningKey } from '../identity/broker-tokens.js';
import { WebIdentityTokens } from '../identity/web-identity-tokens.js';
import type { AwsCredentialIssuer, AwsVia } from '../sessions/aws-credential-issuer.js';
import { DpopVerifier } from '../identity/dpop-verifier.js';
import { IdTokenVerifier } from '../identity/id-token-verifier.js';
import { BrokerLogins } from '../identity/logins.js';
import { createLogger, type Logger } from '../log.js';
import { ServiceMetrics } from '../metrics/service-metrics.js';
import { createNotifier, requestEventsOf } from '../notify/notifier.js';
import { DeviceConfirmations } from '../requests/device-confirmations.js';
import { StartRequests, type RequestEvents } from '../requests/start-requests.js';
import { SessionRevocations } from '../sessions/session-revocations.js';
import { AuditSinks } from '../sinks/audit-sinks.js';
import { JsonlFileSink, StdoutSink } from '../sinks/jsonl-sink.js';
import { OtlpSink } from '../sinks/otlp-sink.js';
import type { AuditSink } from '../sinks/sink.js';
import { SessionVaultTokens } from '../sessions/session-vault-tokens.js';
import { SessionSweeper } from '../sessions/sweeper.js';
import { TaskSessionService } from '../sessions/task-session-service.js';
import { SqliteStore } from '../store/sqlite/sqlite-store.js';
import { TemplateCatalog, type ReloadBy, type ReloadResult } from '../templates/catalog.js';
import type { TaskTemplate } from '../templates/schema.js';
import { isLoopbackHost } from '../limits/urls.js';
import { watchPolicyDir } from '../templates/watch.js';
import { readSecret, VaultAuth, type VaultAuthMethod } from '../vault/auth.js';
import { VaultHttp } from '../vault/http.js';
import { checkVaultAtStart } from '../vault/startup-check.js';
import { VaultTokens } from '../vault/tokens.js';
import { createApp } from './app.js';
import { AuditCheckpointer, checkAuditAtStart } from './audit-checkpoints.js';
import { DenialAudit } from './denial-audit.js';
import { createMetricsApp } from './metrics-app.js';
import { AuthRateLimiter } from './rate-limit.js';
import { WebLogin, WebSessions } from './web/index.js';

export interface RunningServer {
  url: string;
  port: number;
  /** The metrics listener's URL (`metrics.listen`), e.g. http://127.0.0.1:9464; undefined without one. */
  metricsUrl: string | undefined;
  /** The app's own route table (method, path), for tests that must cover every route of a prefix. */
  routes: { method: string; path: string }[];
  /**
   * Reads policiesDir again (templates/catalog.ts): the new set applies to new starts if every
   * template in it is valid, else the set in force stays and `problems` say why. What SIGHUP, the
   * directory watch and the admin route call.
   */
  reload(by: ReloadBy): Promise<ReloadResult>;
  /** The audit sinks' backlogs (sinks/audit-sinks.ts), for metrics. */
  sinks: Pick<AuditSinks, 'backlog' | 'status' | 'refresh'>;
  stop(): Promise<void>;
}

/**
 * The start-up trust check: a misconfigured trust policy is the first thing that breaks in a real
 * set-up, so each problem is logged once, at start, instead of surfacing as AccessDenied later.
 * Runs in the background and never blocks or fails start-up.
 */
async function checkTrustInBackground(config: ServerConfig, templates: Iterable<TaskTemplate>, log: Logger, metrics: ServiceMetrics): Promise<void> {
  try {
    const sts = makeStsClient({ region: config.aws.region, endpoint: config.aws.stsEndpoint, observe: (op, ok, s) => metrics.upstream('sts', op, ok, s) });
    const iam = makeIamClient({ region: config.aws.region, endpoint: config.aws.iamEndpoint, observe: (op, ok, s) => metrics.upstream('iam', op, ok, s) });
    const brokerPrincipalArn = await resolveBrokerPrincipal(sts);
    const roles = [...templates].flatMap((t) => (t.aws && viaOf(t, config) === 'assume-role' ? [{ template: t.name, roleArn: t.aws.roleArn, durationSeconds: t.credentialLifetimeSeconds }] : []));
    // Web-identity roles trust the broker's OIDC provider, and a broker without AWS keys cannot read
    // IAM: `broker policy check --aws --issuer` checks them, with an admin's credentials.
    if (!roles.length) return;
    const findings = await checkRoleTrust({ iam, brokerPrincipalArn, roles });
    for (const f of findings) {
      for (const p of f.problems) log.warn({ template: f.template, roleArn: f.roleArn, check: p.check, hint: p.hint }, p.message);
    }
    const bad = findings.filter((f) => !f.ok).length;
    log.info({ brokerPrincipalArn, templates: findings.length, withProblems: bad }, 'role trust check finished');
  } catch (e) {
    log.warn({ err: (e as Error).message }, 'role trust check could not run');
  }
}

/** The template's aws.via, else the service's. */
function viaOf(t: TaskTemplate, config: ServerConfig): AwsVia {
  return t.aws?.via ?? config.aws.via;
}

/**
 * The web-identity keys must be keys of their own: AWS trusts every key published at the discovery
 * document's jwks_uri, so a token key there would let AWS accept whatever else those keys sign.
 */
function checkKeysApart(webKeys: SigningKey[], others: { field: string; keys: SigningKey[] }[]): void {
  const fingerprint = (k: SigningKey) => `${String(k.publicJwk.x)}.${String(k.publicJwk.y)}`;
  for (const { field, keys } of others) {
    const kids = new Set(keys.map((k) => k.kid));
    const prints = new Set(keys.map(fingerprint));
    const same = webKeys.find((k) => kids.has(k.kid) || prints.has(fingerprint(k)));
    if (same) {
      throw new BrokerError('invalid_config', `aws.webIdentity.signingKeys: key ${same.kid} is also one of ${field} (same kid or same key)`, {
        hint: 'give web identity a key of its own: broker server keygen',
      });
    }
  }
}

function vaultAuthMethod(v: NonNullable<ServerConfig['vault']>): VaultAuthMethod {
  if (v.token) return { kind: 'token', token: v.token };
  if (v.approle) return { kind: 'approle', roleId: v.approle.roleId, secretId: v.approle.secretId, mount: v.approle.mount };
  if (v.jwt) return { kind: 'jwt', role: v.jwt.role, mount: v.jwt.mount, audience: v.jwt.audience };
  throw new TypeError('vault config without an auth method (the schema requires one)');
}

/**
 * The configured audit sinks. OTLP header values are read now (an environment variable or a file),
 * so a missing one stops the start naming the field, and they live only in the exporter.
 */
function makeSinks(config: ServerConfig, log: Logger, now: () => number): { sink: AuditSink; batchSize: number }[] {
  return config.audit.sinks.map((s, i) => {
    const id = s.id!;
    if (s.type === 'jsonl') {
      // A typo in the directory would otherwise only show as a sink failing forever.
      if (!existsSync(dirname(s.path))) {
        throw new BrokerError('invalid_config', `audit.sinks.${i}.path: the directory ${dirname(s.path)} does not exist`, { hint: 'create it (writable by the broker), or fix the path' });
      }
      return { sink: new JsonlFileSink(id, s.path, { fsync: s.fsync, log }), batchSize: s.batchSize };
    }
    if (s.type === 'stdout') return { sink: new StdoutSink(id), batchSize: s.batchSize };
    const headers = Object.fromEntries(Object.entries(s.headers).map(([name, src]) => [name, readSecret(src, config.baseDir, `audit.sinks.${i}.headers.${name}`)]));
    return { sink: new OtlpSink(id, { endpoint: s.endpoint, headers, timeoutMs: s.timeoutMs, now }), batchSize: s.batchSize };
  });
}

/**
 * node:http's limits on what a client may hold open (slowloris: headers or a body a byte at a
 * time). Expired requests get Node's own 408 and the connection is closed. Node checks the
 * timeouts every `connectionsCheckingInterval` (30 s by default, which would let a 10 s headers
 * timeout run to 40 s): here at least four times per headers timeout, at most once a second.
 */
export function httpServerOptions(l: ServerConfig['listen']): ServerOptions {
  return {
    headersTimeout: l.headersTimeoutMs,
    requestTimeout: l.requestTimeoutMs,
    keepAliveTimeout: l.keepAliveTimeoutMs,
    connectionsCheckingInterval: Math.min(1000, Math.floor(l.headersTimeoutMs / 4)),
    // Written down rather than left to Node's default (16 KiB, changed by --max-http-header-size):
    // room for a bearer token naming hundreds of groups plus a DPoP proof; more is a 431.
    maxHeaderSize: MAX_HEADER_BYTES,
  };
}

/** All request headers together, request line included. */
export const MAX_HEADER_BYTES = 16 * 1024;

/** A page session lasts 15 minutes from its login (no sliding), a login at the IdP at most 10. */
const WEB_SESSION_TTL_MS = 15 * 60_000;
const WEB_LOGIN_TTL_MS = 10 * 60_000;
/** Page sessions (and logins under way) kept in memory at most; the oldest go first. */
const WEB_SESSIONS_MAX = 10_000;

/** Cookies are `Secure` unless the service is plain http on loopback (development; config refuses other http). */
export function cookiesSecure(publicUrl: string): boolean {
  const u = new URL(publicUrl);
  return !(u.protocol === 'http:' && isLoopbackHost(u.hostname));
}

export interface StartOptions {
  log?: Logger;
  /** The service's clock (tests move it to expire sessions); defaults to Date.now. */
  now?: () => number;
  /** Who hears of start requests; by default the webhooks of `config.notifications`. */
  requestEvents?: RequestEvents;
  /** Stands in for targeted STS revocation of admin-ended sessions (API tests); by default the role deny documents below. */
  revocations?: StsRevoker;
  /** Start even if the audit chain is broken (`broker server --accept-broken-audit`); the start records what was broken. */
  acceptBrokenAudit?: boolean;
}

export async function startServer(config: ServerConfig, options: StartOptions = {}): Promise<RunningServer> {
  const log = options.log ?? createLogger({ level: config.log.level });
  // Read before anything is opened: a missing file stops the start with nothing to clean up.
  const webClientSecret = config.oidc.webClientSecretFile ? readSecret({ file: config.oidc.webClientSecretFile }, config.baseDir, 'oidc.webClientSecretFile') : undefined;
  const keys = await loadSigningKeys(config.tokens.signingKeys, config.baseDir);
  const auditKeys = config.audit.signingKeys ? await loadSigningKeys(config.audit.signingKeys, config.baseDir, 'audit.signingKeys') : undefined;
  const webKeys = config.aws.webIdentity ? await loadSigningKeys(config.aws.webIdentity.signingKeys, config.baseDir, 'aws.webIdentity.signingKeys') : undefined;
  if (webKeys) checkKeysApart(webKeys, [{ field: 'tokens.signingKeys', keys }, ...(auditKeys ? [{ field: 'audit.signingKeys', keys: auditKeys }] : [])]);
  const now = options.now ?? Date.now;
  const sinkList = makeSinks(config, log, now);
  // Gauges read the store (and the sinks' backlog) at scrape time; nothing is scraped before the
  // listeners below are up, and by then both exist.
  const metrics: ServiceMetrics = new ServiceMetrics({
    activeSessions: () => store.sessions.countActive(),
    pendingStartRequests: () => store.startRequests.countPending(),
    sinkBacklog: () => sinks.backlog(),
    processMetrics: config.metrics.processMetrics,
  });
  const store = new SqliteStore(config.store.sqlite, { busyTimeoutMs: config.store.busyTimeoutMs, now, onAuditWrite: (ok, s) => metrics.auditWrite(ok, s) });
  let templates: TemplateCatalog;
  try {
    // Before anything is decided on this store: a chain broken since the last checkpoint stops the start.
    await checkAuditAtStart({
      source: store.auditLog.chainSource(), log: store.auditLog, keys: auditKeys, ephemeral: config.audit.signingKeys === 'ephemeral',
      accept: options.acceptBrokenAudit ?? false, dbPath: config.store.sqlite, logger: log,
    });
    templates = await TemplateCatalog.open({ dir: config.policiesDir, store, log, now });
    const needWebIdentity = templates.values().filter((t) => t.aws && viaOf(t, config) === 'web-identity').map((t) => t.name);
    if (needWebIdentity.length && !webKeys) {
      throw new BrokerError('invalid_config', `aws.webIdentity: missing, and templates use aws.via web-identity: ${needWebIdentity.join(', ')}`, {
        hint: 'set aws.webIdentity.signingKeys in the service configuration (README, "A broker without AWS keys"), or set those templates\' aws.via to assume-role',
      });
    }
  } catch (e) {
    await store.close();
    throw e;
  }
  if (!auditKeys) log.warn({}, 'audit checkpoints are off (no audit.signingKeys): tampering that recomputes the chain or drops its tail goes undetected');
  const checkpointer = auditKeys && new AuditCheckpointer({
    log: store.auditLog, key: auditKeys[0]!, everyRecords: config.audit.checkpoints.everyRecords,
    everySeconds: config.audit.checkpoints.everySeconds, logger: log, now,
  });
  let url = config.publicUrl;
  const tokens = new BrokerTokens(keys, () => url, { access: config.tokens.accessTokenTtl });
  const logins = new BrokerLogins({ tokens, families: store.refreshTokenFamilies, auditLog: store.auditLog, refreshTtlSeconds: config.tokens.refreshTokenTtl, now });
  const idTokens = new IdTokenVerifier({
    issuer: config.oidc.issuer, audience: config.oidc.audience, algorithms: config.oidc.algorithms,
    groupsClaim: config.oidc.groupsClaim, identityClaim: config.oidc.identityClaim,
    clockToleranceSeconds: config.oidc.clockToleranceSeconds, authorizedParty: config.oidc.cliClientId,
    maxAgeSeconds: config.oidc.maxIdTokenAge, seen: store.seenIdTokens, now,
  });
  // The page's logins come back with ID tokens for the page's own client (aud = webClientId).
  const webIdTokens = new IdTokenVerifier({
    issuer: config.oidc.issuer, audience: config.oidc.webClientId, algorithms: config.oidc.algorithms,
    groupsClaim: config.oidc.groupsClaim, identityClaim: config.oidc.identityClaim,
    clockToleranceSeconds: config.oidc.clockToleranceSeconds, authorizedParty: config.oidc.webClientId,
    maxAgeSeconds: config.oidc.maxIdTokenAge, seen: store.seenIdTokens, now,
  });
  const auth = config.limits.auth;
  const denials = new DenialAudit({ auditLog: store.auditLog, log, windowMs: auth.auditWindow * 1000, maxKeys: auth.auditMaxKeys, now });
  const sts = makeStsClient({ region: config.aws.region, endpoint: config.aws.stsEndpoint, observe: (op, ok, s) => metrics.upstream('sts', op, ok, s) });
  const webIdentity = webKeys && new WebIdentityTokens(webKeys, () => url, now);
  const issuers: Partial<Record<AwsVia, AwsCredentialIssuer>> = { 'assume-role': new StsCredentialIssuer(sts, config.aws.requestTimeoutMs) };
  if (webIdentity) {
    const unsigned = makeUnsignedStsClient({ region: config.aws.region, endpoint: config.aws.stsEndpoint, observe: (op, ok, s) => metrics.upstream('sts', op, ok, s) });
    issuers['web-identity'] = new WebIdentityCredentialIssuer(unsigned, webIdentity, config.aws.requestTimeoutMs);
    // AWS fetches the discovery document from the issuer URL, and an IAM OIDC provider's URL is https.
    if (!url.startsWith('https:')) log.warn({ publicUrl: url }, 'aws.webIdentity with a plain-http publicUrl: AWS cannot fetch its discovery document; only a test STS (moto) accepts these tokens');
  }
  let vault: { auth: VaultAuth; tokens: VaultTokens; sessionTokens: SessionVaultTokens } | undefined;
  if (config.vault) {
    const http = new VaultHttp({
      address: config.vault.address, namespace: config.vault.namespace, timeoutMs: config.vault.requestTimeoutMs,
      observe: (op, ok, s) => metrics.upstream('vault', op, ok, s),
    });
    const auth = new VaultAuth({
      http, method: vaultAuthMethod(config.vault), baseDir: config.baseDir, allowRootToken: config.vault.allowRootToken,
      signLoginJwt: (audience) => tokens.signVaultLoginJwt(audience), log, now,
    });
    const vaultTokens = new VaultTokens(http, auth);
    vault = { auth, tokens: vaultTokens, sessionTokens: new SessionVaultTokens({
      store, tokens: vaultTokens, defaultRole: config.vault.tokenRole, log, now, allowUnsafeTokenRole: config.vault.allowUnsafeTokenRole, metrics,
    }) };
  } else {
    const needVault = templates.values().filter((t) => t.vault).map((t) => t.name);
    if (needVault.length) log.warn({ templates: needVault }, 'these templates grant Vault tokens and the service has no vault: configuration; starting them fails');
  }
  // The role deny documents for ended sessions' credentials, written in the background (never while
  // credentials are issued), pruned and retried at the sweeper's pace.
  const iam = makeIamClient({ region: config.aws.region, endpoint: config.aws.iamEndpoint, observe: (op, ok, s) => metrics.upstream('iam', op, ok, s) });
  const revocations = new SessionRevocations({
    store, policies: new IamRoleDenyPolicies(iam), log, now, intervalMs: config.sweeper.interval * 1000,
  });
  const sessions = new TaskSessionService({
    store, templates, issuer: new RoutedCredentialIssuer(issuers), defaultAwsVia: config.aws.via, vault: vault?.sessionTokens, revocations, log,
    maxActiveSessions: config.limits.maxActiveSessions, now, limitRefusals: denials, metrics,
  });
  const notifier = options.requestEvents ? undefined : createNotifier(config.notifications, log, { baseDir: config.baseDir });
  const requests = new StartRequests({
    store, templates, sessions, log, now, events: options.requestEvents ?? (notifier && requestEventsOf(notifier)), publicUrl: () => url,
    defaults: { mode: config.confirm.default, maxAgeSeconds: config.confirm.maxAge, timeoutSeconds: config.confirm.timeout }, metrics,
  });
  const confirmations = new DeviceConfirmations({
    issuer: config.oidc.issuer, clientId: config.oidc.cliClientId, scopes: config.oidc.scopes, verifier: idTokens, requests, log, now,
  });
  const sinks = new AuditSinks({ sinks: sinkList, auditLog: store.auditLog, cursors: store.sinkCursors, log, now });
  const admin = new AdminService({
    admins: config.admins, store, auditSearch: store.auditSearch, sessions, logins, templates, revocations: options.revocations ?? revocations, sinks, log, now, metrics,
  });
  const sweeper = new SessionSweeper({ sessions, requests, intervalSeconds: config.sweeper.interval, log });
  const reload = async (by: ReloadBy): Promise<ReloadResult> => {
    let r: ReloadResult;
    try {
      r = await templates.reload(by);
    } catch (e) {
      log.error({ trigger: by.trigger, err: (e as Error).message }, 'template reload failed; the templates in force stay');
      throw e;
    }
    const fresh = new Set([...r.added.map((a) => a.name), ...r.changed.map((c) => c.name)]);
    const brought = templates.values().filter((t) => fresh.has(t.name));
    const needWebIdentity = brought.filter((t) => t.aws && viaOf(t, config) === 'web-identity').map((t) => t.name);
    if (!webIdentity && needWebIdentity.length) {
      log.warn({ templates: needWebIdentity }, 'these templates use aws.via web-identity and the service has no aws.webIdentity configuration; starting them fails');
    }
    if (!config.vault && brought.some((t) => t.vault)) {
      log.warn({ templates: brought.filter((t) => t.vault).map((t) => t.name) }, 'these templates grant Vault tokens and the service has no vault: configuration; starting them fails');
    }
    // What the start-up checks of roles found, for the roles a reload brought (their Vault token
    // roles are checked before the first token is issued, as always).
    if (config.aws.checkTrustAtStartup && brought.some((t) => t.aws)) void checkTrustInBackground(config, brought, log, metrics);
    return r;
  };
  const app = createApp({
    tokens, logins, idTokens, sessions, requests, confirmations, admin, reload, auditLog: store.auditLog, log, issuePerMinute: config.limits.issuePerMinute, now,
    auditJwks: { keys: (auditKeys ?? []).map((k) => k.publicJwk) },
    webIdentity,
    dpop: new DpopVerifier({ clockToleranceSeconds: config.oidc.clockToleranceSeconds, now }),
    authLimiter: new AuthRateLimiter({ perAddress: auth.perAddress, global: auth.global, maxAddresses: auth.maxAddresses }, now),
    denials, trustedProxyHops: auth.trustedProxyHops, metrics, adminMetrics: config.metrics.adminRoute ? metrics : undefined,
    publicUrl: () => url,
    pages: {
      requests, verifier: webIdTokens, issuer: config.oidc.issuer, log,
      login: new WebLogin({
        issuer: config.oidc.issuer, clientId: config.oidc.webClientId, clientSecret: webClientSecret, scopes: config.oidc.scopes,
        redirectUri: () => `${url}/requests/callback`, verifier: webIdTokens, allowInsecureHttp: config.oidc.allowInsecureHttp,
      }),
      sessions: new WebSessions({ ttlMs: WEB_SESSION_TTL_MS, flowTtlMs: WEB_LOGIN_TTL_MS, max: WEB_SESSIONS_MAX, secure: cookiesSecure(url), now }),
    },
    loginConfig: { issuer: config.oidc.issuer, clientId: config.oidc.cliClientId, scopes: config.oidc.scopes, allowInsecureHttp: config.oidc.allowInsecureHttp },
  });

  const listen = (fetch: (r: Request) => Response | Promise<Response>, host: string, port: number) => new Promise<ReturnType<typeof serve>>((resolveServe, reject) => {
    const s = serve({ fetch, hostname: host, port, serverOptions: httpServerOptions(config.listen) }, () => resolveServe(s));
    s.once('error', reject);
  });
  const shut = (s: ReturnType<typeof serve>) => new Promise<void>((resolveStop) => {
    s.close(() => resolveStop());
    (s as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
  });
  const server = await listen(app.fetch, config.listen.host, config.listen.port);
  const port = (server.address() as AddressInfo).port;
  if (config.listen.port === 0 && config.publicUrl === listenUrl(config.listen.host, 0)) url = listenUrl(config.listen.host, port);
  let metricsServer: ReturnType<typeof serve> | undefined;
  const close = async () => {
    await Promise.all([shut(server), metricsServer && shut(metricsServer)]);
    await store.close();
  };
  let metricsUrl: string | undefined;
  const m = config.metrics.listen;
  if (m) {
    try {
      metricsServer = await listen(createMetricsApp(metrics).fetch, m.host, m.port);
    } catch (e) {
      await close();
      throw new BrokerError('invalid_config', `metrics.listen: cannot listen on ${listenUrl(m.host, m.port)} (${(e as NodeJS.ErrnoException).code ?? 'error'})`, {
        cause: e, hint: 'give metrics.listen a free port and an address of this machine',
      });
    }
    metricsUrl = listenUrl(m.host, (metricsServer.address() as AddressInfo).port);
  }
  // After listening: with JWT auth, Vault verifies the broker's login against this service's JWKS.
  if (vault) {
    try {
      const grants = templates.values().flatMap((t) => (t.vault ? [{ template: t.name, role: t.vault.tokenRole ?? config.vault!.tokenRole, policies: t.vault.policies }] : []));
      await checkVaultAtStart({ auth: vault.auth, tokens: vault.tokens, grants, log, allowUnsafeTokenRole: config.vault!.allowUnsafeTokenRole });
    } catch (e) {
      await close();
      throw e;
    }
  }
  log.info({ url, metricsUrl: metricsUrl ?? null, templates: templates.versions(), store: config.store.sqlite, vault: config.vault?.address ?? null }, 'broker service listening');
  if (config.aws.checkTrustAtStartup) void checkTrustInBackground(config, templates.values(), log, metrics);
  // Logged by reload(); nothing more to do with a failure here.
  const onWatch = () => { void reload({ trigger: 'watch', reason: 'a file in policiesDir changed' }).catch(() => undefined); };
  const watching = config.policiesWatch ? watchPolicyDir({ dir: config.policiesDir, onChange: onWatch, log }) : undefined;
  sweeper.start();
  denials.start();
  if (checkpointer) {
    checkpointer.start();
    // The records since the last checkpoint (an accepted break among them) are covered at once.
    void checkpointer.checkpoint();
  }
  revocations.start();
  await sinks.start();
  // Logins and ID tokens past their end are refused by their own expiry; their rows go at the sweeper's pace.
  const prune = setInterval(() => {
    void (async () => {
      try {
        await store.seenIdTokens.prune(now());
        await store.refreshTokenFamilies.prune(now() - 3600_000);
      } catch (e) {
        log.warn({ err: (e as Error).message }, 'pruning expired logins failed; retrying at the next interval');
      }
    })();
  }, config.sweeper.interval * 1000).unref();

  return {
    url,
    port,
    metricsUrl,
    routes: app.routes.map((r) => ({ method: r.method, path: r.path })),
    reload,
    sinks,
    stop: async () => {
      watching?.close();
      clearInterval(prune);
      await sweeper.stop();
      await revocations.stop();
      iam.destroy();
      // Counts of refused requests still pending are written before the store closes.
      await denials.stop();
      // A checkpoint over everything written, so the next start checks an empty tail; then the
      // sinks take what they can of the last records (checkpoint included), the rest after the next start.
      await checkpointer?.stop();
      await sinks.stop();
      await close();
      // Bounded (notifier.ts): a receiver that hangs delays the stop by at most that long.
      await notifier?.close();
    },
  };
}
