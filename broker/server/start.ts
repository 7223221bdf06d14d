import { serve } from '@hono/node-server';
import type { AddressInfo } from 'node:net';
import { makeIamClient, makeStsClient } from '../aws/clients.js';
import { checkRoleTrust, resolveBrokerPrincipal } from '../aws/trust-check.js';
import type { ServerConfig } from '../config/server-config.js';
import { BrokerTokens, loadSigningKeys } from '../identity/broker-tokens.js';
import { DpopVerifier } from '../identity/dpop-verifier.js';
import { IdTokenVerifier } from '../identity/id-token-verifier.js';
import { createLogger, type Logger } from '../log.js';
import { TaskSessionService } from '../sessions/task-session-service.js';
import { SqliteStore } from '../store/sqlite-store.js';
import { loadTemplatesOrThrow } from '../templates/load.js';
import type { TaskTemplate } from '../templates/schema.js';
import { createApp } from './app.js';

export interface RunningServer {
  url: string;
  port: number;
  stop(): Promise<void>;
}

/**
 * The start-up trust check: a misconfigured trust policy is the first thing that breaks in a real
 * set-up, so each problem is logged once, at start, instead of surfacing as AccessDenied later.
 * Runs in the background and never blocks or fails start-up.
 */
async function checkTrustInBackground(config: ServerConfig, templates: Map<string, TaskTemplate>, log: Logger): Promise<void> {
  try {
    const sts = makeStsClient({ region: config.aws.region, endpoint: config.aws.stsEndpoint });
    const iam = makeIamClient({ region: config.aws.region, endpoint: config.aws.iamEndpoint });
    const brokerPrincipalArn = await resolveBrokerPrincipal(sts);
    const roles = [...templates.values()].flatMap((t) => (t.aws ? [{ template: t.name, roleArn: t.aws.roleArn, durationSeconds: t.credentialLifetimeSeconds }] : []));
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

export async function startServer(config: ServerConfig, options: { log?: Logger } = {}): Promise<RunningServer> {
  const log = options.log ?? createLogger({ level: config.log.level });
  const templates = loadTemplatesOrThrow(config.policiesDir);
  const keys = await loadSigningKeys(config.tokens.signingKeys, config.baseDir);
  const store = new SqliteStore(config.store.sqlite, { busyTimeoutMs: config.store.busyTimeoutMs });
  const tokens = new BrokerTokens(keys, config.publicUrl, { access: config.tokens.accessTokenTtl, refresh: config.tokens.refreshTokenTtl });
  const idTokens = new IdTokenVerifier({
    issuer: config.oidc.issuer, audience: config.oidc.audience, algorithms: config.oidc.algorithms,
    groupsClaim: config.oidc.groupsClaim, identityClaim: config.oidc.identityClaim,
    clockToleranceSeconds: config.oidc.clockToleranceSeconds,
  });
  const sts = makeStsClient({ region: config.aws.region, endpoint: config.aws.stsEndpoint });
  const sessions = new TaskSessionService({ store, templates, sts, log, maxActiveSessions: config.limits.maxActiveSessions });
  let url = config.publicUrl;
  const app = createApp({
    tokens, idTokens, sessions, store, log, issuePerMinute: config.limits.issuePerMinute,
    dpop: new DpopVerifier({ clockToleranceSeconds: config.oidc.clockToleranceSeconds }),
    publicUrl: () => url,
    loginConfig: { issuer: config.oidc.issuer, clientId: config.oidc.cliClientId, scopes: config.oidc.scopes, allowInsecureHttp: config.oidc.allowInsecureHttp },
  });

  const server = await new Promise<ReturnType<typeof serve>>((resolveServe, reject) => {
    const s = serve({ fetch: app.fetch, hostname: config.listen.host, port: config.listen.port }, () => resolveServe(s));
    s.once('error', reject);
  });
  const port = (server.address() as AddressInfo).port;
  if (config.publicUrl.endsWith(`:${config.listen.port}`) && config.listen.port === 0) url = `http://${config.listen.host}:${port}`;
  log.info({ url, templates: [...templates.keys()], store: config.store.sqlite }, 'broker service listening');
  if (config.aws.checkTrustAtStartup) void checkTrustInBackground(config, templates, log);

  return {
    url,
    port,
    stop: () => new Promise<void>((resolveStop) => {
      server.close(() => { store.close(); resolveStop(); });
      (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
    }),
  };
}
