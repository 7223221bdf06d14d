import { confirmationRequiredOf, freshVaultToken } from '../client/api.js';
import { readCliConfig } from '../client/cli-config.js';
import { loadDeviceKey, loadLogin } from '../client/login-record.js';
import { renewVaultToken } from '../client/vault-renew.js';
import { BrokerError, isBrokerError } from '../errors.js';
import { loginStoreInUse, type LoginStoreInfo } from '../keychain.js';
import type { Logger } from '../log.js';
import {
  adminAuditResponse, adminEndResponse, adminFreezeResponse, adminFreezesResponse, adminOffboardResponse, adminReloadResponse, adminSessionResponse, adminSessionsResponse, adminStatusResponse,
  adminUnfreezeResponse, confirmationStatusResponse, deviceConfirmationResponse, endSessionResponse, sessionStateResponse, startRequestResponse, startRequestsResponse,
  startSessionResponse, templatesResponse, updateSessionResponse, whoamiResponse, type SessionStateResponse, type SessionView,
  type StartSessionRequest, type VaultTokenGrant,
} from '../wire/service-api.js';
import { ContainerEndpoint, type ExecRegistration } from './container-endpoint.js';
import { CredentialCache } from './credential-cache.js';
import { memoryProtection } from './memory-protection.js';
import {
  PROTOCOL_VERSION, type DaemonOp, type DaemonRequest, type DaemonResult, type DaemonStatus, type EndedTasks, type PingResult,
  type StartAnswer, type StartedTask, type StartRequest, type VaultTokenAnswer,
} from './protocol.js';
import { ServiceClient } from './service-client.js';
import { VaultTokenCache } from './vault-token-cache.js';

/**
 * The longest the daemon goes without asking the service whether a session it holds credentials
 * for was ended, frozen or its login revoked (README, "Admin's guide": the 60 s guarantee,
 * test/admin-cli.test.ts). BROKER_STATUS_CHECK_SECONDS shortens it (tests); never longer.
 */
export const MAX_STATUS_CHECK_MS = 60_000;

export interface DaemonCoreOptions {
  now?: () => number;
  /** The daemon's directory: the container endpoint keeps its exec tokens there. */
  runtimeDir?: string;
  /** The status-check interval, at most MAX_STATUS_CHECK_MS. */
  statusCheckMs?: number;
}

/** The interval from the environment, in 1..60 s; anything else is the default, with a warning. */
export function statusCheckMsFrom(env: NodeJS.ProcessEnv, log: Pick<Logger, 'warn'>): number {
  const raw = env.BROKER_STATUS_CHECK_SECONDS;
  if (raw === undefined || raw === '') return MAX_STATUS_CHECK_MS;
  const n = Number(raw);
  if (Number.isInteger(n) && n >= 1 && n * 1000 <= MAX_STATUS_CHECK_MS) return n * 1000;
  log.warn({ BROKER_STATUS_CHECK_SECONDS: raw.slice(0, 20) }, 'BROKER_STATUS_CHECK_SECONDS must be a whole number of seconds from 1 to 60; using 60');
  return MAX_STATUS_CHECK_MS;
}

/** Why the daemon stops handing out what it holds for a session, from the service's answer; undefined: keep serving. */
export function withdrawalOf(s: SessionStateResponse): BrokerError | undefined {
  const t = s.session.template;
  if (s.state === 'ended' && s.endedByAdmin) {
    return new BrokerError('conflict', `the "${t}" task session was ended by an administrator: ${s.endReason ?? ''}`, {
      hint: 'ask your administrator before starting it again',
    });
  }
  if (s.state === 'ended') return new BrokerError('conflict', `the "${t}" task session has ended (${s.endReason ?? 'ended'})`, { hint: `start a new one: broker task ${t}` });
  if (s.frozen) {
    const what = s.frozen.scope === '*' ? 'every task template is' : `"${t}" is`;
    return new BrokerError('frozen', `${what} frozen by an administrator: ${s.frozen.reason}`, {
      hint: 'nothing is issued under it until an administrator unfreezes it',
    });
  }
  return undefined;
}

/** A result for `op`, checked at compile time against the op's result schema (protocol.ts). */
const answer = <Op extends DaemonOp>(_op: Op, result: DaemonResult<Op>): DaemonResult<Op> => result;

/**
 * What the daemon does, independent of its socket: the login (read from the keychain at start and
 * when `broker login`/`logout` says it changed, never per request), the credential cache, and the
 * operations the CLI asks for.
 */
export class DaemonCore {
  private client: ServiceClient | undefined;
  /** Why the keychain's login cannot be used, when it cannot. */
  private loginProblem: BrokerError | undefined;
  /** Where the login was read from (null: no store could be used). */
  private loginStore: LoginStoreInfo | null = null;
  readonly cache: CredentialCache;
  readonly vault: VaultTokenCache;
  /** The container credentials endpoint of `broker exec` (only with a runtime directory). */
  readonly endpoint: ContainerEndpoint | undefined;
  private readonly startedAt = new Date().toISOString();
  private readonly now: () => number;
  private readonly checker: NodeJS.Timeout;
  private checking: Promise<void> | undefined;

  constructor(private readonly log: Logger, options: DaemonCoreOptions = {}) {
    const now = options.now ?? Date.now;
    this.now = now;
    const statusCheckMs = Math.min(options.statusCheckMs ?? MAX_STATUS_CHECK_MS, MAX_STATUS_CHECK_MS);
    this.cache = new CredentialCache({
      log,
      now,
      recheckMs: statusCheckMs,
      upstream: {
        findSession: (t) => this.service().findSession(t),
        issue: (id) => this.service().issue(id),
      },
    });
    this.vault = new VaultTokenCache({
      log,
      now,
      recheckMs: statusCheckMs,
      upstream: {
        findSession: (t) => this.service().findSession(t),
        freshToken: (id) => freshVaultToken(this.service(), id),
        renew: (o) => renewVaultToken({ ...o, now }),
      },
    });
    this.endpoint = options.runtimeDir === undefined ? undefined : new ContainerEndpoint({
      runtimeDir: options.runtimeDir, log, now, credentials: (t, id) => this.cache.getForSession(t, id),
    });
    this.checker = setInterval(() => { void this.checkHeld(); }, statusCheckMs);
    this.checker.unref();
  }

  /**
   * The periodic status check: for each session something is held for, one `GET /v1/sessions/:id`.
   * Ended (by an admin or otherwise) or frozen: what is held goes, and calls are refused with the
   * service's reason. The login refused (revoked by offboarding, or over): everything held goes. The
   * service unreachable: nothing changes (cached credentials are served until they expire, as in
   * any outage).
   */
  checkHeld(): Promise<void> {
    this.checking ??= this.checkOnce().finally(() => { this.checking = undefined; });
    return this.checking;
  }

  private async checkOnce(): Promise<void> {
    const held = new Map<string, SessionView>();
    for (const s of [...this.cache.heldSessions(), ...this.vault.heldSessions()]) held.set(s.id, s);
    if (held.size === 0 || !this.client) return;
    for (const s of held.values()) {
      let state: SessionStateResponse;
      try {
        state = await this.service().request('GET', `/v1/sessions/${encodeURIComponent(s.id)}`, sessionStateResponse);
      } catch (e) {
        if (isBrokerError(e) && (e.code === 'unauthenticated' || e.code === 'not_logged_in')) {
          const error = new BrokerError('unauthenticated', `credentials withheld: the broker login was refused (${e.message})`, { hint: 'log in again: broker login' });
          this.log.warn({ reason: e.message }, 'the service refused the login; dropping every credential held');
          for (const h of held.values()) this.withdraw(h, error);
          return;
        }
        if (isBrokerError(e) && e.code === 'not_found') {
          this.withdraw(s, new BrokerError('not_found', `the "${s.template}" task session is unknown to the service`, { hint: `start one: broker task ${s.template}` }));
          continue;
        }
        this.log.info({ session: s.id, err: (e as Error).message }, 'session status check failed; serving what is held until it expires');
        continue;
      }
      const error = withdrawalOf(state);
      if (error) this.withdraw(s, error);
    }
  }

  private withdraw(s: SessionView, error: BrokerError): void {
    this.log.info({ template: s.template, session: s.id, reason: error.message }, 'the service stopped the task session; what was held for it is dropped');
    this.cache.withdraw(s.template, s.id, error);
    this.vault.withdraw(s.template, s.id, error);
  }

  /**
   * Reads the login (its record and device key, two keychain items) from the keychain. Throws
   * keychain_unavailable when there is no keychain; a login it cannot use (a v1 one, a damaged one)
   * is kept as the reason every request is refused, until the next `broker login`.
   */
  async loadLogin(): Promise<void> {
    const before = this.client;
    const serverUrl = readCliConfig()?.serverUrl;
    this.loginProblem = undefined;
    let client: ServiceClient | undefined;
    try {
      const record = serverUrl ? await loadLogin(serverUrl) : null;
      const key = record ? await loadDeviceKey(record.serverUrl) : null;
      if (record && !key) throw new BrokerError('not_logged_in', `the login to ${record.serverUrl} in the keychain has no device key`, { hint: 'log in again: broker login' });
      client = record && key ? await ServiceClient.fromLogin(record, key, { log: this.log, onLoginChanged: (now, was) => this.loginChanged(now, was) }) : undefined;
    } catch (e) {
      if (!isBrokerError(e) || e.code !== 'not_logged_in') throw e;
      this.loginProblem = e;
      this.log.warn({ serverUrl: serverUrl ?? null, err: e.message }, 'the login in the keychain cannot be used');
    }
    this.client = client;
    this.loginStore = await loginStoreInUse().catch(() => null);
    if (before?.serverUrl !== this.client?.serverUrl || before?.login.developer !== this.client?.login.developer || !this.client) {
      this.cache.clear();
      this.vault.clear();
    }
    this.log.info({ serverUrl: serverUrl ?? null, developer: this.client?.login.developer ?? null }, this.client ? 'login loaded from the keychain' : 'not logged in');
  }

  /** The client adopted another login from the keychain (or found none): what it held for another developer goes. */
  private loginChanged(now: { developer: string } | null, was: { developer: string }): void {
    if (now === null) this.client = undefined;
    if (now?.developer !== was.developer) {
      this.cache.clear();
      this.vault.clear();
    }
    this.log.info({ developer: now?.developer ?? null }, now ? 'login replaced in the keychain by another session; adopted it' : 'login removed from the keychain by another session');
  }

  /**
   * A container endpoint token for `broker exec` (its task session's credentials only); released
   * when the exec's connection closes. `onRevoked`: the daemon revoked it itself (it stops).
   */
  async execEndpoint(task: string, sessionId: string, onRevoked: () => void): Promise<ExecRegistration> {
    if (!this.endpoint) throw new BrokerError('internal', 'this daemon serves no container credentials endpoint');
    this.service();
    return this.endpoint.register(task, sessionId, onRevoked);
  }

  close(): void {
    void this.endpoint?.close();
    clearInterval(this.checker);
    this.cache.close();
    this.vault.close();
    this.client = undefined;
  }

  private service(): ServiceClient {
    if (!this.client && this.loginProblem) throw this.loginProblem;
    if (!this.client) {
      const server = readCliConfig()?.serverUrl;
      // The kernel keyring is the session's: a daemon started elsewhere (systemd --user, another SSH
      // login) never sees a login made here.
      const elsewhere = this.loginStore?.kind === 'kernel-keyring'
        ? `; this daemon (pid ${process.pid}) reads the kernel keyring of the session it was started in (keyring ${this.loginStore.keyring}): if you logged in from another session, run broker daemon stop and retry`
        : '';
      throw new BrokerError('not_logged_in', server ? `not logged in to ${server}` : 'not logged in', {
        hint: (server ? 'run: broker login' : 'run: broker login --server <url>') + elsewhere,
      });
    }
    return this.client;
  }

  async handle(req: DaemonRequest): Promise<DaemonResult<DaemonOp>> {
    switch (req.op) {
      case 'ping': return answer('ping', this.ping());
      case 'credentials': return answer('credentials', await this.cache.get(req.task));
      case 'vault-token': return answer('vault-token', await this.vaultToken(req.task));
      // Answered by the socket server itself, which keeps the connection (daemon.ts, serve).
      case 'exec-endpoint': throw new BrokerError('invalid_request', 'exec-endpoint is answered only on a connection kept open');
      case 'start': return answer('start', await this.start(req.request));
      case 'ensure': return answer('ensure', await this.ensure(req.request, req.paramsGiven));
      case 'status': return answer('status', await this.status());
      case 'request': return answer('request', (await this.service().request('GET', `/v1/requests/${req.id}`, startRequestResponse)).request);
      case 'requests': return answer('requests', (await this.service().request('GET', `/v1/requests?for=${req.for}`, startRequestsResponse)).requests);
      case 'cancel-request': return answer('cancel-request', (await this.service().request('DELETE', `/v1/requests/${req.id}`, startRequestResponse)).request);
      case 'confirm-device': return answer('confirm-device',
        await this.service().request('POST', `/v1/requests/${req.id}/confirmations`, deviceConfirmationResponse, { decision: req.decision, reason: req.reason }));
      // Not retried on a 401 (service-client.ts, requestOnce): that 401 is the decision's, not the token's.
      case 'confirmation': return answer('confirmation',
        await this.service().requestOnce('GET', `/v1/requests/${req.id}/confirmations/${encodeURIComponent(req.confirmation)}`, confirmationStatusResponse));
      case 'end': return answer('end', await this.end(req.template, req.all === true));
      case 'templates': return answer('templates', (await this.service().request('GET', '/v1/templates', templatesResponse)).templates);
      case 'whoami': return answer('whoami', { ...(await this.service().request('GET', '/v1/whoami', whoamiResponse)), server: this.service().serverUrl, loginStore: this.loginStore });
      case 'reload-login': await this.loadLogin(); return answer('reload-login', this.ping());
      case 'admin-sessions': {
        const q = new URLSearchParams();
        for (const [k, v] of Object.entries(req.filter)) if (v !== undefined && v !== false) q.set(k, v === true ? '1' : v);
        const qs = q.toString();
        return answer('admin-sessions', await this.service().request('GET', `/v1/admin/sessions${qs ? `?${qs}` : ''}`, adminSessionsResponse));
      }
      case 'admin-session': return answer('admin-session', await this.service().request('GET', `/v1/admin/sessions/${encodeURIComponent(req.id)}`, adminSessionResponse));
      case 'admin-end': {
        const { op: _op, ...body } = req;
        return answer('admin-end', await this.service().request('POST', '/v1/admin/sessions/end', adminEndResponse, body));
      }
      case 'admin-offboard': return answer('admin-offboard',
        await this.service().request('POST', '/v1/admin/offboard', adminOffboardResponse, { developer: req.developer, reason: req.reason }));
      case 'admin-freeze': {
        const { op: _op, ...body } = req;
        return answer('admin-freeze', await this.service().request('POST', '/v1/admin/freeze', adminFreezeResponse, body));
      }
      case 'admin-unfreeze': {
        const { op: _op, ...body } = req;
        return answer('admin-unfreeze', await this.service().request('POST', '/v1/admin/unfreeze', adminUnfreezeResponse, body));
      }
      case 'admin-freezes': return answer('admin-freezes', await this.service().request('GET', '/v1/admin/freezes', adminFreezesResponse));
      case 'admin-status': return answer('admin-status', await this.service().request('GET', '/v1/admin/status', adminStatusResponse));
      case 'admin-reload': return answer('admin-reload', await this.service().request('POST', '/v1/admin/reload', adminReloadResponse, { reason: req.reason }));
      case 'admin-audit': {
        const q = new URLSearchParams();
        for (const [k, v] of Object.entries(req.query)) for (const one of Array.isArray(v) ? v : [v]) q.append(k, one);
        const qs = q.toString();
        return answer('admin-audit', await this.service().request('GET', `/v1/admin/audit${qs ? `?${qs}` : ''}`, adminAuditResponse));
      }
      case 'stop': return answer('stop', { stopping: true });
    }
  }

  ping(): PingResult {
    return {
      pid: process.pid, version: PROTOCOL_VERSION, serverUrl: this.client?.serverUrl ?? readCliConfig()?.serverUrl ?? null,
      developer: this.client?.login.developer ?? null, startedAt: this.startedAt, memory: memoryProtection(), stats: { ...this.cache.stats },
      tasks: this.cache.status(), loginStore: this.loginStore,
      ...(this.endpoint ? { containerEndpoint: this.endpoint.status() } : {}),
    };
  }

  /**
   * Starts a session, or answers the start request the service made when the template needs a
   * human (confirmation_required: 401 step-up or 202 approvers), for the CLI to show and wait for.
   */
  private async start(r: StartRequest): Promise<StartAnswer> {
    const body: StartSessionRequest = {
      template: r.template, params: r.params, reason: r.reason, agent: r.agent, ...(r.ttl ? { ttl: r.ttl } : {}),
      ...(r.confirmedRequest ? { confirmedRequest: r.confirmedRequest } : {}), ...(r.breakGlass ? { breakGlass: true } : {}),
    };
    let issued;
    try {
      issued = await this.service().request('POST', '/v1/sessions', startSessionResponse, body);
    } catch (e) {
      const pending = confirmationRequiredOf(e);
      if (!pending) throw e;
      this.log.info({ template: r.template, request: pending.body.request.id, status: pending.status }, 'task start waits for a human confirmation');
      return { confirmationRequired: true, message: pending.body.message, status: pending.status, request: pending.body.request };
    }
    // Held for credential_process and vault-token: the first use after `broker task` needs no network.
    if (issued.credentials) this.cache.put({ session: issued.session, credentials: issued.credentials });
    if (issued.vault) this.vault.put(issued.session, issued.vault);
    return { session: issued.session, reused: false, ...summary(issued.credentials?.AccessKeyId, issued.credentials?.Expiration, issued.vault) };
  }

  /** The task's Vault token; without a task, that of the one active session that grants one. */
  private async vaultToken(task: string | undefined): Promise<VaultTokenAnswer> {
    let template = task;
    if (!template) {
      const withVault = (await this.service().sessions()).filter((s) => s.vault);
      if (withVault.length !== 1) {
        throw new BrokerError(withVault.length ? 'conflict' : 'not_found', withVault.length
          ? `${withVault.length} active task sessions grant Vault tokens (${withVault.map((s) => s.template).join(', ')}): say which`
          : 'no active task session grants a Vault token', {
          hint: withVault.length ? 'pass --task <template>, or set BROKER_TASK' : 'start one: broker task <template>',
        });
      }
      template = withVault[0]!.template;
    }
    const { grant } = await this.vault.get(template);
    return { template, token: grant.token, accessor: grant.accessor, address: grant.address, namespace: grant.namespace ?? null, expiresAt: grant.expiresAt };
  }

  /** `broker exec`: reuse the template's active session (no confirmation needed), or start one. */
  private async ensure(r: StartRequest, paramsGiven: boolean): Promise<StartAnswer> {
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
      session = (await this.service().request('PATCH', `/v1/sessions/${encodeURIComponent(existing.id)}`, updateSessionResponse, { agent: r.agent })).session;
      // What is held names the old agent (broker:agent tag, Vault token metadata): get ones that name
      // this agent. A Vault token already handed out stays valid until the session ends.
      this.cache.drop(r.template);
      this.vault.drop(r.template);
    }
    // Warm what the session grants, so the agent's first call is answered from memory.
    const creds = session.region !== null ? await this.cache.get(r.template) : undefined;
    const vault = session.vault ? (await this.vault.get(r.template)).grant : undefined;
    return { session, reused: true, ...summary(creds?.AccessKeyId, creds?.Expiration, vault) };
  }

  private async status(): Promise<DaemonStatus> {
    const held = new Map(this.cache.status().map((s) => [s.sessionId, s]));
    const tokens = new Map(this.vault.status().map((v) => [v.template, v]));
    const base = { serverUrl: this.client?.serverUrl ?? readCliConfig()?.serverUrl ?? null, developer: this.client?.login.developer ?? null };
    try {
      const sessions = await this.service().sessions();
      return { ...base, sessions: sessions.map((s) => ({ ...s, credentials: held.get(s.id) ?? null, vaultToken: tokens.get(s.template) ?? null })) };
    } catch (e) {
      if (e instanceof BrokerError && (e.code === 'not_logged_in' || e.code === 'unauthenticated')) throw e;
      const now = this.now();
      const heldFor = new Map([...this.cache.heldSessions(), ...this.vault.heldSessions()]
        .filter((s) => Date.parse(s.expiresAt) > now).map((s) => [s.id, s]));
      const sessions = [...heldFor.values()].sort((a, b) => a.template.localeCompare(b.template))
        .map((s) => ({ ...s, credentials: held.get(s.id) ?? null, vaultToken: tokens.get(s.template) ?? null, heldOnly: true as const }));
      return { ...base, sessions, serviceError: (e as Error).message };
    }
  }

  private async end(template: string | undefined, all: boolean): Promise<EndedTasks> {
    if (!template && !all) throw new BrokerError('invalid_request', 'say which session to end', { hint: 'broker end <template>  or  broker end --all' });
    const targets = (await this.service().sessions()).filter((s) => all || s.template === template);
    if (template && targets.length === 0) {
      this.cache.drop(template);
      this.vault.drop(template);
      throw new BrokerError('not_found', `no active "${template}" task session`, { hint: 'see active sessions with: broker status' });
    }
    const ended: EndedTasks['ended'] = [];
    for (const s of targets) {
      // Dropped first: even if the service call fails, nothing more is handed out for it from here.
      this.cache.drop(s.template);
      this.vault.drop(s.template);
      const r = await this.service().request('DELETE', `/v1/sessions/${encodeURIComponent(s.id)}`, endSessionResponse);
      const pending = (r.vaultTokens ?? []).filter((t) => !t.revoked).map((t) => ({ accessor: t.accessor, ...(t.error ? { error: t.error } : {}) }));
      this.log.info({ template: s.template, session: s.id, vaultTokensPending: pending.length }, 'task session ended');
      ended.push({ id: s.id, template: s.template, vaultTokensPending: pending });
    }
    return { ended };
  }
}

function summary(accessKeyId: string | undefined, expiration: string | undefined, vault: VaultTokenGrant | undefined): Omit<StartedTask, 'session' | 'reused'> {
  return {
    ...(accessKeyId ? { accessKeyId, credentialsExpire: expiration } : {}),
    ...(vault ? { vaultAccessor: vault.accessor, vaultTokenExpires: vault.expiresAt } : {}),
  };
}

function sameParams(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}
