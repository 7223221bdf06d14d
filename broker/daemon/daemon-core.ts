import { z } from 'zod';
import type { ProcessCredentials, SessionView, TemplateSummary } from '../client/api.js';
import { readCliConfig } from '../client/cli-config.js';
import { loadLogin } from '../client/login-record.js';
import { BrokerError } from '../errors.js';
import type { Logger } from '../log.js';
import { CredentialCache, type EntryStatus } from './credential-cache.js';
import { PROTOCOL_VERSION, type DaemonRequest, type PingResult, type StartRequest } from './protocol.js';
import { ServiceClient } from './service-client.js';

const templateName = z.string().regex(/^[a-z0-9-]{1,40}$/, 'must be a template name ([a-z0-9-], at most 40 chars)');
const startRequest = z.strictObject({
  template: templateName,
  params: z.record(z.string().max(64), z.string().max(1024)),
  reason: z.string().max(512),
  agent: z.string().min(1).max(256),
  ttl: z.string().max(32).optional(),
});
const requestSchema = z.discriminatedUnion('op', [
  z.strictObject({ op: z.literal('ping') }),
  z.strictObject({ op: z.literal('credentials'), task: templateName }),
  z.strictObject({ op: z.literal('start'), request: startRequest }),
  z.strictObject({ op: z.literal('ensure'), request: startRequest, paramsGiven: z.boolean() }),
  z.strictObject({ op: z.literal('status') }),
  z.strictObject({ op: z.literal('end'), template: templateName.optional(), all: z.boolean().optional() }),
  z.strictObject({ op: z.literal('templates') }),
  z.strictObject({ op: z.literal('whoami') }),
  z.strictObject({ op: z.literal('reload-login') }),
  z.strictObject({ op: z.literal('stop') }),
]);

export function parseRequest(raw: unknown): DaemonRequest {
  const r = requestSchema.safeParse(raw);
  if (!r.success) {
    throw new BrokerError('invalid_request', 'malformed request to the broker daemon', {
      details: r.error.issues.map((i) => ({ path: `/${i.path.join('/')}`, message: i.message })),
      hint: 'the broker CLI and daemon may be different versions: broker daemon stop, then retry',
    });
  }
  return r.data as DaemonRequest;
}

export interface StartedTask { session: SessionView; accessKeyId: string; credentialsExpire: string; reused: boolean }
export interface DaemonStatus {
  serverUrl: string | null;
  developer: string | null;
  sessions: (SessionView & { credentials: EntryStatus | null })[];
  /** Set when the service could not be asked: `sessions` then lists only what the daemon holds. */
  serviceError?: string;
}

/**
 * What the daemon does, independent of its socket: the login (read from the keychain at start and
 * when `broker login`/`logout` says it changed, never per request), the credential cache, and the
 * operations the CLI asks for.
 */
export class DaemonCore {
  private client: ServiceClient | undefined;
  readonly cache: CredentialCache;
  private readonly startedAt = new Date().toISOString();

  constructor(private readonly log: Logger, now: () => number = Date.now) {
    this.cache = new CredentialCache({
      log,
      now,
      upstream: {
        findSession: (t) => this.service().findSession(t),
        issue: (id) => this.service().issue(id),
      },
    });
  }

  /** Reads the login from the keychain. Throws keychain_unavailable when there is no keychain. */
  async loadLogin(): Promise<void> {
    const before = this.client;
    const serverUrl = readCliConfig()?.serverUrl;
    const record = serverUrl ? await loadLogin(serverUrl) : null;
    this.client = record ? await ServiceClient.fromLogin(record) : undefined;
    if (before?.serverUrl !== this.client?.serverUrl || before?.login.developer !== this.client?.login.developer || !this.client) {
      this.cache.clear();
    }
    this.log.info({ serverUrl: serverUrl ?? null, developer: this.client?.login.developer ?? null }, this.client ? 'login loaded from the keychain' : 'not logged in');
  }

  close(): void {
    this.cache.close();
    this.client = undefined;
  }

  private service(): ServiceClient {
    if (!this.client) {
      const server = readCliConfig()?.serverUrl;
      throw new BrokerError('not_logged_in', server ? `not logged in to ${server}` : 'not logged in', {
        hint: server ? 'run: broker login' : 'run: broker login --server <url>',
      });
    }
    return this.client;
  }

  async handle(req: DaemonRequest): Promise<unknown> {
    switch (req.op) {
      case 'ping': return this.ping();
      case 'credentials': return this.cache.get(req.task);
      case 'start': return this.start(req.request);
      case 'ensure': return this.ensure(req.request, req.paramsGiven);
      case 'status': return this.status();
      case 'end': return this.end(req.template, req.all === true);
      case 'templates': return (await this.service().request<{ templates: TemplateSummary[] }>('GET', '/v1/templates')).templates;
      case 'whoami': return { ...(await this.service().request<{ id: string; email: string; groups: string[] }>('GET', '/v1/whoami')), server: this.service().serverUrl };
      case 'reload-login': await this.loadLogin(); return this.ping();
      case 'stop': return { stopping: true };
    }
  }

  ping(): PingResult {
    return {
      pid: process.pid, version: PROTOCOL_VERSION, serverUrl: this.client?.serverUrl ?? readCliConfig()?.serverUrl ?? null,
      developer: this.client?.login.developer ?? null, startedAt: this.startedAt, stats: { ...this.cache.stats },
      tasks: this.cache.status(),
    };
  }

  private async start(r: StartRequest): Promise<StartedTask> {
    const issued = await this.service().request<{ session: SessionView; credentials: ProcessCredentials }>('POST', '/v1/sessions', {
      template: r.template, params: r.params, reason: r.reason, agent: r.agent, ...(r.ttl ? { ttl: r.ttl } : {}),
    });
    // Held for credential_process: the first call after `broker task` needs no network.
    this.cache.put(issued);
    return { session: issued.session, accessKeyId: issued.credentials.AccessKeyId, credentialsExpire: issued.credentials.Expiration, reused: false };
  }

  /** `broker exec`: reuse the template's active session, or start one. */
  private async ensure(r: StartRequest, paramsGiven: boolean): Promise<StartedTask> {
    const existing = await this.service().findSession(r.template);
    if (!existing) return this.start(r);
    if (paramsGiven && !sameParams(existing.params, r.params)) {
      const had = Object.entries(existing.params).map(([k, v]) => `${k}=${v}`).join(' ') || 'no parameters';
      throw new BrokerError('conflict', `a "${r.template}" task session with other parameters is active (${had})`, {
        hint: `reuse it by leaving out --param, or end it first: broker end ${r.template}`,
      });
    }
    let session = existing;
    if (existing.agent !== r.agent) {
      session = (await this.service().request<{ session: SessionView }>('PATCH', `/v1/sessions/${encodeURIComponent(existing.id)}`, { agent: r.agent })).session;
      // Credentials already held carry the old broker:agent tag: fetch ones that name this agent.
      this.cache.drop(r.template);
    }
    const creds = await this.cache.get(r.template);
    return { session, accessKeyId: creds.AccessKeyId, credentialsExpire: creds.Expiration, reused: true };
  }

  private async status(): Promise<DaemonStatus> {
    const held = new Map(this.cache.status().map((s) => [s.sessionId, s]));
    const base = { serverUrl: this.client?.serverUrl ?? readCliConfig()?.serverUrl ?? null, developer: this.client?.login.developer ?? null };
    try {
      const sessions = await this.service().sessions();
      return { ...base, sessions: sessions.map((s) => ({ ...s, credentials: held.get(s.id) ?? null })) };
    } catch (e) {
      if (e instanceof BrokerError && (e.code === 'not_logged_in' || e.code === 'unauthenticated')) throw e;
      return { ...base, sessions: [], serviceError: (e as Error).message };
    }
  }

  private async end(template: string | undefined, all: boolean): Promise<{ ended: { id: string; template: string }[] }> {
    if (!template && !all) throw new BrokerError('invalid_request', 'say which session to end', { hint: 'broker end <template>  or  broker end --all' });
    const targets = (await this.service().sessions()).filter((s) => all || s.template === template);
    if (template && targets.length === 0) {
      this.cache.drop(template);
      throw new BrokerError('not_found', `no active "${template}" task session`, { hint: 'see active sessions with: broker status' });
    }
    for (const s of targets) {
      // Dropped first: even if the service call fails, nothing more is handed out for it from here.
      this.cache.drop(s.template);
      await this.service().request('DELETE', `/v1/sessions/${encodeURIComponent(s.id)}`);
      this.log.info({ template: s.template, session: s.id }, 'task session ended');
    }
    return { ended: targets.map((s) => ({ id: s.id, template: s.template })) };
  }
}

function sameParams(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}
