import { BrokerError } from '../errors.js';
import type { Principal } from '../identity/principal.js';
import type { Logger } from '../log.js';
import { NO_METRICS, type BrokerMetrics, type RateLimitName } from '../metrics/service-metrics.js';
import type { AuditEvent } from '../store/audit-event.js';
import { ALL_TEMPLATES, type Freeze } from '../store/freezes.js';
import { MAX_DURATION_SECONDS, MIN_DURATION_SECONDS } from '../limits/aws.js';
import type { NewTaskSession, Store, TaskSession, TemplateUsage } from '../store/store.js';
import type { TemplateCatalog } from '../templates/catalog.js';
import { credentialSeconds, outlivesSessionSeconds, sessionSeconds } from '../templates/durations.js';
import { buildAssumeRoleRequest, isAllowed, newSessionId, roleSessionName, validateParams, type AssumeRoleRequest } from '../templates/render.js';
import type { TaskTemplate } from '../templates/schema.js';
import type { SessionView } from '../wire/service-api.js';
import type { AwsCredentialIssuer, AwsCredentials, AwsVia } from './aws-credential-issuer.js';
import { KeyedLock } from './keyed-lock.js';
import type { SessionRevoker } from './session-revocations.js';
import { vaultNotConfigured, type IssuedVaultToken, type RevocationResult, type SessionVaultTokens } from './session-vault-tokens.js';

export type { AwsCredentials } from './aws-credential-issuer.js';
export type { IssuedVaultToken, RevocationResult } from './session-vault-tokens.js';

export interface StartTaskRequest {
  template: string;
  params: Record<string, string>;
  reason: string;
  agent: string;
  /** Requested task-session length; capped by the template's maximum. */
  ttlSeconds?: number | undefined;
  /** The start request humans confirmed for this start (broker/requests/): recorded in the `session.start` detail. */
  confirmedRequest?: {
    id: string; confirmedBy: string[]; approvedBy: string[]; breakGlass: boolean;
    /** The template version the humans decided on: the start is refused under any other. */
    templateVersion?: string | null | undefined;
  } | undefined;
}

/** A session as the API shows it (wire/service-api.ts `sessionView`): never a secret in it. */
export type TaskSessionView = SessionView;

/** What a task session grants: AWS credentials, a Vault token, or both (as its template says). */
export interface IssuedCredentials {
  session: TaskSessionView;
  credentials?: AwsCredentials | undefined;
  vault?: IssuedVaultToken | undefined;
}

/** Where a session stands, for the daemon's periodic check (`GET /v1/sessions/:id`). */
export interface SessionState {
  session: TaskSessionView;
  state: 'active' | 'ended' | 'expired';
  endedAt: number | null;
  endReason: string | null;
  endedByAdmin: boolean;
  /** The freeze covering its template, if any: nothing is issued under it meanwhile. */
  frozen: Freeze | null;
}

/** The refusal of a start or re-issue under a freeze, with the admin's reason (423 Locked). */
export function frozenError(f: Freeze, template: string): BrokerError {
  const what = f.scope === ALL_TEMPLATES ? 'every task template is' : `"${template}" is`;
  return new BrokerError('frozen', `${what} frozen by an administrator: ${f.reason}`, {
    hint: 'nothing is started or issued under it until an administrator unfreezes it (broker admin unfreeze)',
  });
}

/** What a developer is told of their session an administrator ended. */
export function endedByAdminMessage(reason: string): string {
  return `ended by an administrator: ${reason}`;
}

export interface EndedSession {
  session: TaskSessionView;
  /** One entry per Vault token of the session that was not revoked before. */
  vaultTokens: RevocationResult[];
  /**
   * Its AWS credentials: `scheduled` (recorded; the role's deny document is written in the
   * background), `off` (no AWS grant, `aws.revokeOnEnd: false`, or no revocation configured),
   * `failed` (could not be recorded; they live until they expire).
   */
  awsRevocation: 'scheduled' | 'off' | 'failed';
}

export interface TaskSessionServiceDeps {
  /** `freezes` absent: nothing is ever frozen (unit tests of other parts). */
  store: Pick<Store, 'sessions' | 'auditLog'> & Partial<Pick<Store, 'freezes'>>;
  /** The templates in force (reloadable), and the versions running sessions started under. */
  templates: TemplateCatalog;
  /** Refusals by a template's limits, recorded in aggregate (server/denial-audit.ts); none: each audited alone. */
  limitRefusals?: LimitRefusals | undefined;
  /** AWS credentials for a session's AssumeRole request (aws/sts-issuer.ts, aws/web-identity-issuer.ts). */
  issuer: AwsCredentialIssuer;
  /** The service's `aws.via`, for templates that name none (absent: assume-role). */
  defaultAwsVia?: AwsVia | undefined;
  /** Absent when the service has no `vault:` configuration. */
  vault?: SessionVaultTokens | undefined;
  /** Denies an ended session's issued AWS credentials in its role's policy (absent: no revocation). */
  revocations?: SessionRevoker | undefined;
  log: Logger;
  maxActiveSessions: number;
  now?: () => number;
  /** Issuances, denials and template-limit refusals are counted here (absent: not counted). */
  metrics?: BrokerMetrics | undefined;
}

/** A refusal by a template's limits; `reason` from a fixed set per limit, so aggregates stay few. */
export interface LimitRefusal {
  event: 'session.start';
  reason: string;
  developer: string;
  template: string;
}

export interface LimitRefusals {
  record(r: LimitRefusal): Promise<void>;
}

/** The window of the per-day limits: the last 24 hours, rolling (no burst at midnight). */
export const LIMIT_DAY_MS = 86_400_000;

/**
 * The domain of task sessions: who may start what, for how long, and the credentials issued under
 * them (AWS credentials, Vault tokens). Every decision is audited; a credential leaves this class
 * only after the audit record of its issue has been committed (fail closed).
 */
export class TaskSessionService {
  private readonly now: () => number;
  /**
   * Sessions whose first issue failed and that could not be ended then, because the store could not
   * be written (the case that made the issue fail, e.g. the audit log became unwritable after STS
   * answered). They are ended at the next write the service attempts (settleAbandoned), and until
   * then count as ended: they block no new start, are not listed, and get nothing issued. Kept in
   * memory; the store keeps the truth of it (a start without an `issued` record), from which
   * endIncompleteStarts ends them after a restart, or after a crash in the middle of a start.
   */
  private readonly abandoned = new Map<string, { session: TaskSession; reason: string }>();
  /** Sessions whose start is under way in this process: never taken for an incomplete one. */
  private readonly starting = new Set<string>();
  /**
   * One start per developer at a time, from the checks to the session's record: the checks (one
   * session per template, the active-session limit) and the record must not interleave with
   * another start's. In this process; several service replicas need the store to enforce it.
   */
  private readonly startLock = new KeyedLock();

  private readonly metrics: BrokerMetrics;

  constructor(private readonly deps: TaskSessionServiceDeps) {
    this.now = deps.now ?? Date.now;
    this.metrics = deps.metrics ?? NO_METRICS;
  }

  /** The session as the API shows it, with what its own template version grants (`t`: resolved by the caller, else what memory holds). */
  view(s: TaskSession, t: TaskTemplate | undefined = this.deps.templates.peek(s)): TaskSessionView {
    const vault = this.deps.vault;
    return {
      id: s.id, template: s.template, templateVersion: s.templateVersion, params: s.params, reason: s.reason, agent: s.agent,
      roleSessionName: s.roleSessionName, region: t?.aws?.region ?? null,
      vault: t?.vault && vault ? { address: vault.address, namespace: vault.namespace ?? null, policies: [...t.vault.policies] } : null,
      createdAt: new Date(s.createdAt).toISOString(), expiresAt: new Date(s.expiresAt).toISOString(),
    };
  }

  /** Records a denial and returns it, to throw. A denial is safe to return even if the audit write fails. */
  private async denied(error: BrokerError, e: Omit<AuditEvent, 'decision' | 'reason'>): Promise<BrokerError> {
    this.metrics.denial(e.event, error.code);
    try {
      await this.deps.store.auditLog.append({ ...e, decision: 'denied', reason: error.message });
    } catch (auditError) {
      this.deps.log.error({ err: (auditError as Error).message, event: e.event }, 'audit write failed while denying');
    }
    return error;
  }

  startableTemplates(p: Principal): TaskTemplate[] {
    return this.deps.templates.values().filter((t) => isAllowed(t, { email: p.email, groups: p.groups }));
  }

  async start(p: Principal, req: StartTaskRequest): Promise<IssuedCredentials> {
    await this.settleAbandoned();
    const { created, t, request } = await this.startLock.run(p.id, () => this.recordStart(p, req));
    try {
      // The Vault token first: it can be revoked if what follows fails. STS credentials cannot be
      // recalled, so they come last, when nothing after them can fail.
      const vault = t.vault ? await this.deps.vault!.issue(t, created, 'vault.issue') : undefined;
      const credentials = request ? await this.issue(t, created, request, 'credentials.issue') : undefined;
      return { session: this.view(created, t), credentials, vault };
    } catch (e) {
      // Nothing half-created: a session whose first grants failed does not stay open, and a token it
      // got is revoked (or, if Vault cannot be reached now, left to the sweeper).
      await this.abandon(created, `first issue failed: ${(e as Error).message}`);
      throw e;
    } finally {
      this.starting.delete(created.id);
    }
  }

  /** The checks of a start, then its record (`session.start allowed`); every refusal is audited. */
  private async recordStart(p: Principal, req: StartTaskRequest): Promise<{ created: TaskSession; t: TaskTemplate; request: AssumeRoleRequest | undefined }> {
    const base = { event: 'session.start' as const, developer: p.id, template: req.template };
    const t = this.deps.templates.get(req.template);
    if (!t) {
      const removedAt = this.deps.templates.removedAt(req.template);
      throw await this.denied(removedAt === undefined
        ? new BrokerError('not_found', `no task template named "${req.template}"`, { hint: 'list the ones you may start with: broker templates' })
        : new BrokerError('not_found', `the task template "${req.template}" was removed from the service at ${new Date(removedAt).toISOString()}`, {
          hint: 'running sessions of it go on until they end; list the templates you may start with: broker templates',
        }), base);
    }
    if (!isAllowed(t, { email: p.email, groups: p.groups })) {
      throw await this.denied(new BrokerError('forbidden', `${p.id} may not start "${t.name}": not in its allowed groups or emails`), base);
    }
    await this.notFrozen(t.name, base);
    // What the humans decided on is the grant of the version the request was made for: a reload
    // that changed the template since voids the request.
    const decided = req.confirmedRequest?.templateVersion;
    if (decided && decided !== t.version) {
      throw await this.denied(new BrokerError('conflict', `the template "${t.name}" changed since start request ${req.confirmedRequest!.id} was made (version ${decided}, now ${t.version})`, {
        hint: `what was confirmed no longer applies; make a new request: broker task ${t.name}`,
      }), { ...base, detail: { request: req.confirmedRequest!.id } });
    }
    if (t.vault && !this.deps.vault) throw await this.denied(vaultNotConfigured(t.name), base);
    let params: Record<string, string>;
    try {
      params = validateParams(t, req.params);
    } catch (e) {
      throw await this.denied(e as BrokerError, base);
    }
    const active = (await this.deps.store.sessions.active(p.id)).filter((s) => !this.abandoned.has(s.id));
    const same = active.find((s) => s.template === t.name);
    if (same) {
      throw await this.denied(new BrokerError('conflict', `a "${t.name}" task session is already active (${same.id}, ends ${new Date(same.expiresAt).toISOString()})`, {
        hint: `reuse it, or end it first: broker end ${t.name}`,
      }), base);
    }
    if (active.length >= this.deps.maxActiveSessions) {
      throw await this.denied(new BrokerError('conflict', `${active.length} task sessions are already active; the limit is ${this.deps.maxActiveSessions}`, {
        hint: 'end some with: broker end --all',
      }), base);
    }

    const now = this.now();
    const ttl = sessionSeconds(t, req.ttlSeconds);
    const id = newSessionId();
    const session: NewTaskSession = {
      id, developer: p.id, template: t.name, params, reason: req.reason, agent: req.agent,
      roleSessionName: roleSessionName(p.id, t.name, id), createdAt: now, expiresAt: now + ttl * 1000, templateVersion: t.version,
    };
    // Build (and so validate) the AWS and Vault requests before anything is recorded as allowed.
    let request: AssumeRoleRequest | undefined;
    try {
      // The same `now` as the session's: a millisecond passing here must not shave a second off.
      if (t.aws) request = buildAssumeRoleRequest(t, { developer: p.id, sessionId: id, agent: req.agent, params }, this.credentialSeconds(t, session.expiresAt, now));
      if (t.vault) this.deps.vault!.request(t, session);
    } catch (e) {
      throw await this.denied(e as BrokerError, base);
    }
    // The template's limits are counted in the transaction that records the start (store.ts), so
    // service processes sharing the store cannot both take the last place.
    let hit: LimitHit | undefined;
    const check = hasLimits(t) ? {
      since: now - LIMIT_DAY_MS,
      refuse: (u: TemplateUsage) => {
        hit = limitHit(t, u, now);
        if (hit) throw hit.error;
      },
    } : undefined;
    try {
      await this.deps.store.sessions.create(session, {
        ...base, decision: 'allowed', sessionId: id, reason: req.reason,
        roleSessionName: session.roleSessionName, detail: {
          params, agent: req.agent, ttlSeconds: ttl, grants: grantsOf(t), templateVersion: t.version,
          ...(req.confirmedRequest ? { request: req.confirmedRequest.id, confirmedBy: req.confirmedRequest.confirmedBy, approvedBy: req.confirmedRequest.approvedBy, breakGlass: req.confirmedRequest.breakGlass } : {}),
        },
      }, check);
    } catch (e) {
      if (!hit || e !== hit.error) throw e;
      this.deps.log.info({ developer: p.id, template: t.name, limit: hit.limit, value: hit.value, count: hit.count }, 'task start refused by a template limit');
      this.metrics.rateLimited(LIMIT_METRIC[hit.limit]);
      if (!this.deps.limitRefusals) throw await this.denied(hit.error, base);
      this.metrics.denial('session.start', hit.error.code);
      await this.deps.limitRefusals.record({ event: 'session.start', reason: hit.reason, developer: p.id, template: t.name });
      throw hit.error;
    }
    // From here the sweeper leaves it alone however long the first issue takes (endIncompleteStarts).
    this.starting.add(id);
    try {
      return { created: (await this.deps.store.sessions.get(id))!, t, request };
    } catch (e) {
      this.starting.delete(id);
      throw e;
    }
  }

  async reissue(p: Principal, sessionId: string): Promise<IssuedCredentials & { credentials: AwsCredentials }> {
    const s = await this.ownedSession(p, sessionId, 'credentials.reissue');
    const base = { event: 'credentials.reissue' as const, developer: p.id, template: s.template, sessionId };
    const t = await this.templateOf(s, base);
    await this.stillAllowed(p, t, base);
    await this.notFrozen(t.name, base);
    if (!t.aws) {
      throw await this.denied(new BrokerError('conflict', `task session ${sessionId} (${t.name}) grants no AWS credentials`, {
        ...(t.vault ? { hint: `it grants a Vault token: POST /v1/sessions/${sessionId}/vault-token` } : {}),
      }), base);
    }
    const request = buildAssumeRoleRequest(t, { developer: p.id, sessionId: s.id, agent: s.agent, params: s.params }, this.credentialSeconds(t, s.expiresAt));
    const credentials = await this.issue(t, s, request, 'credentials.reissue');
    return { session: this.view(s, t), credentials };
  }

  /**
   * A fresh Vault token under an active session, for when the daemon can no longer renew the one it
   * has. Earlier tokens of the session stay valid until it ends (an agent may hold one).
   */
  async reissueVaultToken(p: Principal, sessionId: string): Promise<IssuedCredentials & { vault: IssuedVaultToken }> {
    const s = await this.ownedSession(p, sessionId, 'vault.reissue');
    const base = { event: 'vault.reissue' as const, developer: p.id, template: s.template, sessionId };
    const t = await this.templateOf(s, base);
    await this.stillAllowed(p, t, base);
    await this.notFrozen(t.name, base);
    if (!t.vault) {
      throw await this.denied(new BrokerError('conflict', `task session ${sessionId} (${t.name}) grants no Vault token`, {
        ...(t.aws ? { hint: `it grants AWS credentials: POST /v1/sessions/${sessionId}/credentials` } : {}),
      }), base);
    }
    const vault = this.deps.vault;
    if (!vault) throw await this.denied(vaultNotConfigured(t.name), base);
    return { session: this.view(s, t), vault: await vault.issue(t, s, 'vault.reissue') };
  }

  async list(p: Principal): Promise<TaskSessionView[]> {
    await this.settleAbandoned();
    const open = (await this.deps.store.sessions.active(p.id)).filter((s) => !this.abandoned.has(s.id));
    return Promise.all(open.map(async (s) => this.view(s, await this.deps.templates.ofSession(s))));
  }

  /**
   * Ends the session (recorded first, so nothing is issued under it from then on), then revokes its
   * Vault tokens by accessor. A token Vault cannot revoke now stays recorded as unrevoked: the
   * sweeper retries, and it dies at its explicit max TTL (the end of the session) in any case.
   */
  async end(p: Principal, sessionId: string, serviceReason?: string): Promise<EndedSession> {
    const s = await this.ownedSession(p, sessionId, 'session.end');
    // Without a reason it is the developer's own `broker end`: `detail.by` says who ended it (the
    // principal chain shows it, broker/audit/principal-chain.ts); with one, the service ended it.
    const reason = serviceReason ?? 'ended by developer';
    await this.deps.store.sessions.end(s.id, reason, {
      event: 'session.end', decision: 'ended', developer: p.id, template: s.template, sessionId: s.id, reason,
      roleSessionName: s.roleSessionName, ...(serviceReason === undefined ? { detail: { by: p.id } } : {}),
    });
    const vaultTokens = this.deps.vault ? await this.deps.vault.revokeSession(s, reason) : [];
    return { session: this.view(s, await this.deps.templates.ofSession(s)), vaultTokens, awsRevocation: await this.revokeAws(s, p.id, reason) };
  }

  /**
   * Records the ended session for the deny in its role's policy. `until` is a bound on its last
   * credential's expiry: the session was issued nothing after now, and nothing longer than the
   * template's credential lifetime (at least STS's 900 s floor, templates/durations.ts).
   */
  private async revokeAws(s: TaskSession, by: string, reason: string): Promise<EndedSession['awsRevocation']> {
    const t = await this.deps.templates.ofSession(s);
    if (!t?.aws || !t.aws.revokeOnEnd || !this.deps.revocations) return 'off';
    const until = this.now() + Math.min(MAX_DURATION_SECONDS, Math.max(MIN_DURATION_SECONDS, t.credentialLifetimeSeconds)) * 1000;
    try {
      await this.deps.revocations.revokeSessions([{ id: s.id, developer: s.developer, roleArn: t.aws.roleArn, until }], { admin: by, reason });
      return 'scheduled';
    } catch (e) {
      this.deps.log.error({ sessionId: s.id, err: (e as Error).message }, 'could not record the revocation of an ended session; its credentials live until they expire');
      return 'failed';
    }
  }

  /**
   * Ends a session for an administrator (`broker admin end`, offboarding, a freeze with --revoke):
   * recorded with who and why, so the developer's side says "ended by an administrator: <reason>";
   * then its Vault tokens are revoked as for `broker end`. Undefined when it had already ended.
   */
  async endByAdmin(s: TaskSession, admin: string, reason: string): Promise<Omit<EndedSession, 'awsRevocation'> | undefined> {
    const changed = await this.deps.store.sessions.end(s.id, reason, {
      event: 'session.end', decision: 'ended', developer: s.developer, template: s.template, sessionId: s.id, reason,
      roleSessionName: s.roleSessionName, detail: { admin },
    }, admin);
    if (!changed) return undefined;
    const vaultTokens = this.deps.vault ? await this.deps.vault.revokeSession(s, endedByAdminMessage(reason)) : [];
    return { session: this.view(s, await this.deps.templates.ofSession(s)), vaultTokens };
  }

  /**
   * Where one of the developer's sessions stands, ended or not (the daemon asks at least once a
   * minute while it holds credentials for it). Not audited: it issues nothing and changes nothing.
   * Another developer's session is a 404, as everywhere (no oracle).
   */
  async state(p: Principal, sessionId: string): Promise<SessionState> {
    const s = await this.deps.store.sessions.get(sessionId);
    if (!s || s.developer !== p.id) throw new BrokerError('not_found', `no task session ${sessionId}`, { hint: 'see active ones with: broker status' });
    const ended = s.endedAt !== null || this.abandoned.has(s.id);
    return {
      session: this.view(s, await this.deps.templates.ofSession(s)),
      state: ended ? 'ended' : s.expiresAt <= this.now() ? 'expired' : 'active',
      endedAt: s.endedAt, endReason: s.endReason ?? this.abandoned.get(s.id)?.reason ?? null, endedByAdmin: s.endedBy !== null,
      frozen: (await this.deps.store.freezes?.covering(s.template)) ?? null,
    };
  }

  /**
   * Refuses (audited, 423 `frozen`) a start of a template an administrator froze, before a start
   * request is made for it: nobody is asked to confirm what cannot start.
   */
  async notFrozen(template: string, base: Omit<AuditEvent, 'decision' | 'reason'>): Promise<void> {
    const f = await this.deps.store.freezes?.covering(template);
    if (f) throw await this.denied(frozenError(f, template), { ...base, detail: { frozenBy: f.by, scope: f.scope } });
  }

  /** Ends the sessions whose time is up (`session.end`, reason `expired`); for the sweeper. */
  async endExpired(): Promise<TaskSession[]> {
    await this.settleAbandoned();
    const ended: TaskSession[] = [];
    for (const s of await this.deps.store.sessions.expiredOpen()) {
      const changed = await this.deps.store.sessions.end(s.id, 'expired', {
        event: 'session.end', decision: 'ended', developer: s.developer, template: s.template, sessionId: s.id, reason: 'expired',
        roleSessionName: s.roleSessionName,
      });
      if (changed) ended.push(s);
    }
    return ended;
  }

  /**
   * Ends the sessions whose start never completed — the service stopped or crashed between recording
   * the start and recording its first issue, or could not record the issue and could not end the
   * session then (see `abandoned`) — once they are older than `graceMs`. A start under way in this
   * process is never touched however long it takes; the grace covers one in another process sharing
   * the store. Their Vault tokens, if any, are revoked by revokePending.
   */
  async endIncompleteStarts(graceMs: number): Promise<TaskSession[]> {
    const reason = 'its start never completed (no first issue was recorded)';
    const ended: TaskSession[] = [];
    for (const s of await this.deps.store.sessions.incompleteStarts(this.now() - graceMs)) {
      if (this.starting.has(s.id)) continue;
      const changed = await this.deps.store.sessions.end(s.id, reason, {
        event: 'session.end', decision: 'ended', developer: s.developer, template: s.template, sessionId: s.id, reason,
        roleSessionName: s.roleSessionName,
      });
      this.abandoned.delete(s.id);
      if (changed) ended.push(s);
    }
    return ended;
  }

  /** Revokes every unrevoked Vault token of an ended or expired session; for the sweeper. */
  revokePending(): Promise<RevocationResult[]> {
    return this.deps.vault ? this.deps.vault.revokePending() : Promise.resolve([]);
  }

  /** Records which agent works under the session; later credentials carry it as broker:agent. */
  async setAgent(p: Principal, sessionId: string, agent: string): Promise<TaskSessionView> {
    const s = await this.ownedSession(p, sessionId, 'session.update');
    const t = await this.deps.templates.ofSession(s);
    if (s.agent === agent) return this.view(s, t);
    await this.deps.store.sessions.setAgent(s.id, agent, {
      event: 'session.update', decision: 'updated', developer: p.id, template: s.template, sessionId: s.id,
      roleSessionName: s.roleSessionName, detail: { agent, previousAgent: s.agent },
    });
    return this.view({ ...s, agent }, t);
  }

  /**
   * Credentials live min(template credential lifetime, time left in the task session), but never
   * under STS's 900 s floor nor over its 43,200 s ceiling: the rule `broker policy explain` shows too
   * (templates/durations.ts).
   */
  private credentialSeconds(t: TaskTemplate, sessionExpiresAt: number, now = this.now()): number {
    return credentialSeconds(t, sessionExpiresAt, now);
  }

  /**
   * The template version the session started under, kept until it ends whatever reloads did since
   * (a changed or removed template changes only new starts): from memory, else from the store.
   */
  private async templateOf(s: TaskSession, base: Omit<AuditEvent, 'decision' | 'reason'>): Promise<TaskTemplate> {
    const t = await this.deps.templates.ofSession(s);
    if (t) return t;
    throw await this.denied(new BrokerError('conflict', `the template "${s.template}" version ${s.templateVersion ?? '(none recorded)'} of task session ${s.id} is no longer known to the service`, {
      hint: `start a new one: broker task ${s.template}`,
    }), base);
  }

  /**
   * Access is checked at every issue, not only at the start, against the template of that name in
   * force (what it grants stays the session's version): a template whose allowed groups or emails
   * a reload narrowed, or a developer whose login's groups no longer match, gets nothing more under
   * a session started before. A template removed by a reload has no allowed list in force: its
   * sessions are checked against their own version's until they end.
   */
  private async stillAllowed(p: Principal, own: TaskTemplate, base: Omit<AuditEvent, 'decision' | 'reason'>): Promise<void> {
    const t = this.deps.templates.get(own.name) ?? own;
    if (isAllowed(t, { email: p.email, groups: p.groups })) return;
    throw await this.denied(new BrokerError('forbidden', `${p.id} may no longer use "${t.name}": not in its allowed groups or emails`, {
      hint: `the session stays open until it ends; end it with: broker end ${t.name}`,
    }), base);
  }

  /** An active session of this developer, or a recorded denial (404 for others' sessions: no oracle). */
  private async ownedSession(p: Principal, sessionId: string, event: AuditEvent['event']): Promise<TaskSession> {
    await this.settleAbandoned();
    const s = await this.deps.store.sessions.get(sessionId);
    const base = { event, developer: p.id, sessionId, template: s?.template };
    if (!s || s.developer !== p.id) {
      throw await this.denied(new BrokerError('not_found', `no task session ${sessionId}`, { hint: 'see active ones with: broker status' }), base);
    }
    const abandoned = this.abandoned.get(s.id);
    if (s.endedAt !== null && s.endedBy !== null) {
      throw await this.denied(new BrokerError('conflict', `task session ${sessionId} was ${endedByAdminMessage(s.endReason ?? '')}`, {
        hint: 'ask the administrator why; a new task start may be refused too',
      }), base);
    }
    if (s.endedAt !== null || abandoned) {
      throw await this.denied(new BrokerError('conflict', `task session ${sessionId} has ended (${s.endReason ?? abandoned?.reason ?? 'ended'})`, { hint: `start a new one: broker task ${s.template}` }), base);
    }
    if (s.expiresAt <= this.now()) {
      throw await this.denied(new BrokerError('conflict', `task session ${sessionId} expired at ${new Date(s.expiresAt).toISOString()}`, { hint: `start a new one: broker task ${s.template}` }), base);
    }
    return s;
  }

  private async issue(t: TaskTemplate, s: TaskSession, request: AssumeRoleRequest, event: 'credentials.issue' | 'credentials.reissue'): Promise<AwsCredentials> {
    const base = { event, developer: s.developer, template: t.name, sessionId: s.id, roleSessionName: s.roleSessionName };
    const via = t.aws?.via ?? this.deps.defaultAwsVia ?? 'assume-role';
    let credentials: AwsCredentials;
    try {
      credentials = await this.deps.issuer.issue(request, { via, template: t.name, sessionId: s.id });
    } catch (e) {
      this.metrics.issuance(event, t.name, 'failed');
      try {
        await this.deps.store.auditLog.append({ ...base, decision: 'failed', reason: (e as Error).message });
      } catch { /* the STS failure is what the caller needs to see */ }
      throw e;
    }
    // Under 900 s left in the session, STS's minimum still makes them live 900 s: recorded, so the
    // audit log says which credentials outlive their session, and by how much.
    const outlives = outlivesSessionSeconds(request.DurationSeconds, s.expiresAt, this.now());
    // Committed before the credentials leave this function; throws audit_unavailable otherwise.
    try {
      await this.deps.store.auditLog.append({
        ...base, decision: 'issued', accessKeyId: credentials.accessKeyId, expiration: credentials.expiration.toISOString(),
        detail: { durationSeconds: request.DurationSeconds, roleArn: request.RoleArn, via, ...(outlives > 0 ? { outlivesSessionSeconds: outlives } : {}) },
      });
    } catch (e) {
      // STS issued them, but they are withheld: the AccessKeyId (not a secret) goes to the server log
      // so the CloudTrail trail of keys nobody received can still be explained.
      this.deps.log.error({ sessionId: s.id, accessKeyId: credentials.accessKeyId, err: (e as Error).message }, 'credentials withheld: the audit log could not record their issue');
      this.metrics.issuance(event, t.name, 'withheld');
      throw e;
    }
    this.metrics.issuance(event, t.name, 'issued');
    return credentials;
  }

  /** Ends the sessions abandon() could not end, once the store takes writes again. */
  private async settleAbandoned(): Promise<void> {
    for (const [id, { session: s, reason }] of this.abandoned) {
      try {
        await this.deps.store.sessions.end(id, reason, {
          event: 'session.end', decision: 'ended', developer: s.developer, template: s.template, sessionId: id, reason,
        });
      } catch {
        return; // still unwritable: the next write tries again
      }
      this.abandoned.delete(id);
    }
  }

  /** Ends a session whose first grants failed, and revokes the Vault token it may have got. */
  private async abandon(s: TaskSession, reason: string): Promise<void> {
    try {
      await this.deps.store.sessions.end(s.id, reason, {
        event: 'session.end', decision: 'ended', developer: s.developer, template: s.template, sessionId: s.id, reason,
      });
    } catch (e) {
      this.abandoned.set(s.id, { session: s, reason });
      this.deps.log.error({ sessionId: s.id, err: (e as Error).message }, 'could not end a failed session; it is ended at the next write');
    }
    if (!this.deps.vault) return;
    try {
      await this.deps.vault.revokeSession(s, reason);
    } catch (e) {
      this.deps.log.error({ sessionId: s.id, err: (e as Error).message }, 'could not revoke the Vault token of a failed session');
    }
  }
}

/** The metric name of each template limit (metrics/service-metrics.ts). */
const LIMIT_METRIC: Record<keyof TaskTemplate['limits'], RateLimitName> = {
  concurrentSessions: 'template_concurrent_sessions',
  startsPerDay: 'template_starts_per_day',
  startsPerDeveloperPerDay: 'template_starts_per_developer_per_day',
};

interface LimitHit {
  limit: keyof TaskTemplate['limits'];
  value: number;
  count: number;
  /** Fixed per limit and value (the aggregate's key), without the count. */
  reason: string;
  error: BrokerError;
}

function hasLimits(t: TaskTemplate): boolean {
  const l = t.limits;
  return l.concurrentSessions !== undefined || l.startsPerDay !== undefined || l.startsPerDeveloperPerDay !== undefined;
}

/**
 * The first limit of `t` a start now would break: open sessions (409: it frees when one ends),
 * then the day's starts (429, with when the oldest start counted leaves the 24-hour window).
 */
function limitHit(t: TaskTemplate, u: TemplateUsage, now: number): LimitHit | undefined {
  const l = t.limits;
  const where = `limits in ${t.file.split('/').pop() ?? t.name}`;
  if (l.concurrentSessions !== undefined && u.open >= l.concurrentSessions) {
    return {
      limit: 'concurrentSessions', value: l.concurrentSessions, count: u.open, reason: `limit concurrentSessions (${l.concurrentSessions}) reached`,
      error: new BrokerError('conflict', `"${t.name}" has ${u.open} open task sessions; its limit concurrentSessions is ${l.concurrentSessions}`, {
        hint: `try again when one ends; an admin can raise limits.concurrentSessions (${where})`,
      }),
    };
  }
  const retry = (oldest: number | null) => Math.max(1, Math.ceil(((oldest ?? now) + LIMIT_DAY_MS - now) / 1000));
  if (l.startsPerDeveloperPerDay !== undefined && u.developerStarts >= l.startsPerDeveloperPerDay) {
    const after = retry(u.oldestDeveloperStart);
    return {
      limit: 'startsPerDeveloperPerDay', value: l.startsPerDeveloperPerDay, count: u.developerStarts,
      reason: `limit startsPerDeveloperPerDay (${l.startsPerDeveloperPerDay}) reached`,
      error: new BrokerError('rate_limited', `you started "${t.name}" ${u.developerStarts} times in the last 24 hours; its limit startsPerDeveloperPerDay is ${l.startsPerDeveloperPerDay}`, {
        hint: `try again in ${after}s at the earliest; an admin can raise limits.startsPerDeveloperPerDay (${where})`, retryAfterSeconds: after,
      }),
    };
  }
  if (l.startsPerDay !== undefined && u.starts >= l.startsPerDay) {
    const after = retry(u.oldestStart);
    return {
      limit: 'startsPerDay', value: l.startsPerDay, count: u.starts, reason: `limit startsPerDay (${l.startsPerDay}) reached`,
      error: new BrokerError('rate_limited', `"${t.name}" was started ${u.starts} times in the last 24 hours; its limit startsPerDay is ${l.startsPerDay}`, {
        hint: `try again in ${after}s at the earliest; an admin can raise limits.startsPerDay (${where})`, retryAfterSeconds: after,
      }),
    };
  }
  return undefined;
}

function grantsOf(t: TaskTemplate): string[] {
  return [...(t.aws ? ['aws'] : []), ...(t.vault ? ['vault'] : [])];
}
