/**
 * Start requests: a task start that waits for humans (README, "Confirmation"). A template's
 * `confirm` rule says who: the requester's fresh IdP login (`self`), that and `approvals` distinct
 * approvers (`approvers`), or nobody (`none`, today's direct start). A decision rests on an ID token
 * the service verified itself (device confirmation here, or the page), whose `auth_time` is after
 * the request was made and within the rule's maxAge, spent once in the seen-id-tokens store. No SDK,
 * no DB here: the store's interfaces, and TaskSessionService for the start itself.
 */
import { createHash, randomBytes } from 'node:crypto';
import { BrokerError } from '../errors.js';
import type { VerifiedIdToken } from '../identity/id-token-verifier.js';
import type { Principal } from '../identity/principal.js';
import type { Logger } from '../log.js';
import type { BrokerMetrics } from '../metrics/service-metrics.js';
import { KeyedLock } from '../sessions/keyed-lock.js';
import type { IssuedCredentials, StartTaskRequest, TaskSessionService } from '../sessions/task-session-service.js';
import type { AuditEvent } from '../store/audit-event.js';
import type { DecisionKind, NewStartRequest, RequestDecision, StartRequest, StartRequestStatus } from '../store/start-requests.js';
import type { Store } from '../store/store.js';
import type { TemplateCatalog } from '../templates/catalog.js';
import { isAllowed } from '../templates/access.js';
import { sessionSeconds } from '../templates/durations.js';
import { renderPolicy, validateParams } from '../templates/render.js';
import { confirmRule, type ConfirmDefaults, type ConfirmRule, type TaskTemplate } from '../templates/schema.js';
import type { StartRequestView } from '../wire/service-api.js';

export type { StartRequest, RequestDecision, DecisionKind } from '../store/start-requests.js';

/** Tolerance between the IdP's clock and the service's when comparing `auth_time` (seconds granular). */
export const AUTH_TIME_SKEW_MS = 5000;

/** What a notifier implements (another module); every hook gets the request as the API shows it. */
export interface RequestEvents {
  onCreated(view: StartRequestView): void;
  onDecided(view: StartRequestView, decision: DecisionKind | 'started'): void;
  onExpired(view: StartRequestView): void;
  onBreakGlass(view: StartRequestView): void;
}

export const noRequestEvents: RequestEvents = { onCreated() {}, onDecided() {}, onExpired() {}, onBreakGlass() {} };

/**
 * A fresh IdP login of the person deciding: a verified (not yet spent) ID token, and when the login
 * for this decision began (for maxAge 0: the login must have happened after that).
 */
export interface FreshLogin {
  token: VerifiedIdToken;
  loginStartedAt: number;
  via: 'page' | 'device';
}

export interface StartRequestsDeps {
  store: Pick<Store, 'startRequests' | 'seenIdTokens' | 'auditLog'>;
  /** The templates in force (reloadable): a request is made and started under the set in force then. */
  templates: TemplateCatalog;
  sessions: TaskSessionService;
  defaults: ConfirmDefaults;
  /** The service's public URL; a request's page is `${publicUrl}/requests/<id>`. */
  publicUrl: () => string;
  events?: RequestEvents | undefined;
  log: Logger;
  now?: () => number;
  /** Refusals are counted here (absent: not counted). */
  metrics?: BrokerMetrics | undefined;
}

/** What `POST /v1/sessions` asks for. */
export interface StartAsk extends StartTaskRequest {
  breakGlass?: boolean | undefined;
}

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
export function newRequestId(): string {
  return `req_${[...randomBytes(26)].map((b) => BASE32[b & 31]).join('')}`;
}

/** SHA-256 of canonical JSON {template, params (keys sorted), ttlSeconds}: what a decision covers. */
export function requestDigest(template: string, params: Record<string, string>, ttlSeconds: number | null): string {
  const sorted = Object.fromEntries(Object.keys(params).sort().map((k) => [k, params[k]!]));
  return createHash('sha256').update(JSON.stringify({ template, params: sorted, ttlSeconds })).digest('hex');
}

/** True when `p` is one of the rule's approvers (by IdP group, or verified email). */
export function isApprover(r: Pick<StartRequest, 'approvers'>, p: Principal): boolean {
  return isAllowed({ allowed: r.approvers } as TaskTemplate, { email: p.email, groups: p.groups });
}

export class StartRequests {
  private readonly now: () => number;
  private readonly events: RequestEvents;
  /** One decision or start per request at a time, in this process (the store's conditional writes guard replicas). */
  private readonly lock = new KeyedLock();

  constructor(private readonly deps: StartRequestsDeps) {
    this.now = deps.now ?? Date.now;
    this.events = deps.events ?? noRequestEvents;
  }

  /** The template's confirm rule with the service's defaults. */
  ruleOf(t: TaskTemplate): ConfirmRule {
    return confirmRule(t, this.deps.defaults);
  }

  private notify(f: (e: RequestEvents) => void): void {
    try {
      f(this.events);
    } catch (e) {
      this.deps.log.warn({ err: (e as Error).message }, 'request notification failed');
    }
  }

  private async audit(e: AuditEvent): Promise<void> {
    await this.deps.store.auditLog.append(e);
  }

  /** A refusal, audited (best effort: a refusal is safe to return if the audit write fails), to throw. */
  private async refused(error: BrokerError, e: Omit<AuditEvent, 'decision' | 'reason'>): Promise<BrokerError> {
    this.deps.metrics?.denial(e.event, error.code);
    try {
      await this.audit({ ...e, decision: 'denied', reason: error.message, detail: { ...e.detail, refused: true } });
    } catch (auditError) {
      this.deps.log.error({ err: (auditError as Error).message, event: e.event }, 'audit write failed while refusing');
    }
    return error;
  }

  /**
   * `POST /v1/sessions` without `confirmedRequest`: undefined when the template needs nobody (the
   * caller starts as before); otherwise the pending request (an identical pending one of the same
   * requester is answered again, not duplicated). Unknown templates and access refusals are left
   * to the start, which audits them (undefined).
   */
  async ask(p: Principal, req: StartAsk): Promise<StartRequest | undefined> {
    const t = this.deps.templates.get(req.template);
    if (!t || !isAllowed(t, { email: p.email, groups: p.groups })) return undefined;
    const rule = this.ruleOf(t);
    const base = { event: 'request.create' as const, developer: p.id, template: t.name, detail: { agent: req.agent } };
    if (req.breakGlass) {
      if (rule.mode !== 'approvers' || !rule.breakGlass) {
        throw await this.refused(new BrokerError('forbidden', `"${t.name}" does not allow break-glass starts`, { hint: 'only templates with confirm.mode approvers and confirm.breakGlass: true do' }), { ...base, event: 'request.break_glass' });
      }
      if (req.reason.trim() === '') {
        throw await this.refused(new BrokerError('invalid_request', 'a break-glass start needs a reason', { details: [{ path: '/reason', message: 'is required with breakGlass', hint: 'say why: --reason "…"' }] }), { ...base, event: 'request.break_glass' });
      }
    }
    if (rule.mode === 'none') return undefined;
    let params: Record<string, string>;
    try {
      params = validateParams(t, req.params);
    } catch (e) {
      // Left to the start, which audits the refusal as session.start denied.
      if (e instanceof BrokerError) return undefined;
      throw e;
    }
    const ttlSeconds = req.ttlSeconds ?? null;
    const digest = requestDigest(t.name, params, ttlSeconds);
    const same = await this.deps.store.startRequests.findPending(p.id, digest);
    // A pending request made for an older version of the template is not answered again: its deciders would decide on another grant.
    if (same && same.breakGlass === Boolean(req.breakGlass) && same.agent === req.agent && (same.templateVersion ?? t.version) === t.version) return same;
    const now = this.now();
    const r: NewStartRequest = {
      id: newRequestId(), requester: p.id, template: t.name, params, reason: req.reason, agent: req.agent, ttlSeconds,
      breakGlass: Boolean(req.breakGlass), mode: rule.mode, maxAgeSeconds: rule.maxAgeSeconds,
      approvals: rule.mode === 'approvers' && !req.breakGlass ? rule.approvals : 0, approvers: rule.approvers,
      digest, createdAt: now, expiresAt: now + rule.timeoutSeconds * 1000, templateVersion: t.version,
    };
    const event = req.breakGlass ? 'request.break_glass' as const : 'request.create' as const;
    await this.deps.store.startRequests.create(r, {
      event, decision: 'pending', developer: p.id, template: t.name, reason: req.reason,
      detail: { request: r.id, agent: req.agent, params, ttlSeconds, mode: rule.mode, breakGlass: r.breakGlass },
    });
    const created = (await this.deps.store.startRequests.get(r.id))!;
    const view = this.view(created);
    this.notify((e) => e.onCreated(view));
    if (created.breakGlass) this.notify((e) => e.onBreakGlass(view));
    return created;
  }

  /** The challenge of a pending request: 401 (the requester's step-up) or 202 (approvers). */
  challengeStatus(r: StartRequest): 401 | 202 {
    return r.mode === 'approvers' && !r.breakGlass ? 202 : 401;
  }

  /**
   * `POST /v1/sessions` with `confirmedRequest`: the requester starts the confirmed request, for
   * exactly its template, parameters and ttl (409 otherwise, nothing changes), once. The session's
   * clock starts now (TaskSessionService), not at the request.
   */
  async startConfirmed(p: Principal, requestId: string, req: StartTaskRequest): Promise<IssuedCredentials> {
    return this.lock.run(requestId, async () => {
      const r = await this.deps.store.startRequests.get(requestId);
      const base = { event: 'session.start' as const, developer: p.id, template: req.template, detail: { request: requestId } };
      if (!r || r.requester !== p.id) throw await this.refused(new BrokerError('not_found', `no start request ${requestId} of yours`), base);
      const t = this.deps.templates.get(r.template);
      let params: Record<string, string> = req.params;
      try {
        if (t && r.template === req.template) params = validateParams(t, req.params);
      } catch { /* the digest below differs */ }
      if (requestDigest(req.template, params, req.ttlSeconds ?? null) !== r.digest) {
        throw await this.refused(new BrokerError('conflict', `start request ${requestId} was confirmed for other parameters`, {
          hint: `it covers ${r.template} ${JSON.stringify(r.params)}${r.ttlSeconds ? ` ttl ${r.ttlSeconds}s` : ''}; start exactly that, or make a new request`,
        }), base);
      }
      if (r.status !== 'confirmed' || r.expiresAt <= this.now()) {
        const why = r.status === 'confirmed' ? 'expired' : r.status;
        throw await this.refused(new BrokerError('conflict', `start request ${requestId} is ${why}, not confirmed`, {
          hint: r.status === 'pending' ? `it waits for: ${this.waitingFor(r).join(', ')}` : `make a new one: broker task ${r.template}`,
        }), base);
      }
      const issued = await this.deps.sessions.start(p, {
        ...req, params,
        confirmedRequest: {
          id: r.id, breakGlass: r.breakGlass, templateVersion: r.templateVersion,
          confirmedBy: r.decisions.filter((d) => d.decision === 'confirm').map((d) => d.by),
          approvedBy: r.decisions.filter((d) => d.decision === 'approve').map((d) => d.by),
        },
      });
      // Audited by the session's own `session.start allowed`, whose detail names the request.
      const moved = await this.deps.store.startRequests.transition(r.id, ['confirmed'], 'started', undefined, issued.session.id);
      if (!moved) {
        // Another replica started it (or the sweeper expired it) in the meantime: this session goes.
        await this.deps.sessions.end(p, issued.session.id, `start request ${r.id} was no longer confirmed`);
        throw new BrokerError('conflict', `start request ${requestId} is no longer confirmed`);
      }
      const after = await this.deps.store.startRequests.get(r.id);
      if (after) {
        const view = this.view(after);
        this.notify((e) => e.onDecided(view, 'started'));
      }
      return issued;
    });
  }

  /**
   * A human decision on a request, resting on a fresh IdP login (`login`): `confirm` by the
   * requester only; `approve` by an approver who is not the requester, each person once; `deny` by
   * an approver or the requester. The login's `auth_time` must be after the request was made and
   * within maxAge (both with AUTH_TIME_SKEW_MS; maxAge 0: after this login began), and its ID token
   * is spent here, once.
   */
  async decide(requestId: string, login: FreshLogin, decision: DecisionKind, reason: string): Promise<StartRequest> {
    return this.lock.run(requestId, async () => {
      const person = login.token.principal;
      const r = await this.deps.store.startRequests.get(requestId);
      const event = decision === 'confirm' ? 'request.confirm' as const : decision === 'approve' ? 'request.approve' as const : 'request.deny' as const;
      const base = { event, developer: r?.requester, template: r?.template, detail: { request: requestId, by: person.id, via: login.via, agent: r?.agent } };
      if (!r) throw await this.refused(new BrokerError('not_found', `no start request ${requestId}`), base);
      const requester = person.id === r.requester;
      const approver = isApprover(r, person);
      if (!requester && !approver) {
        throw await this.refused(new BrokerError('forbidden', `${person.id} may not decide on start request ${r.id}`, { hint: 'only its requester and its approvers may' }), base);
      }
      const now = this.now();
      if (r.status !== 'pending' || r.expiresAt <= now) {
        throw await this.refused(new BrokerError('conflict', `start request ${r.id} is ${r.status === 'pending' ? 'expired' : r.status}: it takes no decisions`), base);
      }
      if (decision === 'confirm' && !requester) {
        throw await this.refused(new BrokerError('forbidden', `only ${r.requester}, who asked, can confirm start request ${r.id}`, { hint: approver ? 'approve it instead' : undefined }), base);
      }
      if (decision === 'approve') {
        if (requester) throw await this.refused(new BrokerError('forbidden', `${person.id} asked for start request ${r.id} and cannot approve it`, { hint: 'another approver must; you confirm it' }), base);
        if (r.approvals === 0) throw await this.refused(new BrokerError('conflict', `start request ${r.id} needs no approval`), base);
        if (r.decisions.some((d) => d.decision === 'approve' && d.by === person.id)) {
          throw await this.refused(new BrokerError('conflict', `${person.id} has already approved start request ${r.id}`, { hint: 'each approver counts once' }), base);
        }
      }
      if (decision === 'confirm' && r.decisions.some((d) => d.decision === 'confirm')) {
        throw await this.refused(new BrokerError('conflict', `start request ${r.id} is already confirmed by its requester`), base);
      }
      const authTime = login.token.authTime;
      // A step-up challenge (RFC 9470), not a bad token: nothing is spent, the request stays pending
      // and the same person may decide with a new login.
      const challenge = (why: string) => new BrokerError('confirmation_required', `the IdP login is not fresh enough for start request ${r.id}: ${why}`, {
        hint: r.maxAgeSeconds === 0 ? 'log in again at the IdP for this decision' : `log in again at the IdP (a login at most ${r.maxAgeSeconds}s old, after the request was made)`,
        stepUpMaxAgeSeconds: r.maxAgeSeconds,
      });
      if (authTime === undefined) throw await this.refused(challenge('the ID token has no auth_time'), base);
      if (authTime < r.createdAt - AUTH_TIME_SKEW_MS) throw await this.refused(challenge('the login happened before the request was made'), base);
      if (now - authTime > r.maxAgeSeconds * 1000 + AUTH_TIME_SKEW_MS) throw await this.refused(challenge(`the login is older than ${r.maxAgeSeconds}s`), base);
      if (r.maxAgeSeconds === 0 && authTime < login.loginStartedAt - AUTH_TIME_SKEW_MS) throw await this.refused(challenge('maxAge 0 needs a login for this decision'), base);
      if (!(await this.deps.store.seenIdTokens.remember(login.token.once.key, login.token.once.until))) {
        throw await this.refused(new BrokerError('unauthenticated', 'ID token rejected: already used', { hint: 'each IdP login decides once; log in again' }), base);
      }
      const d: RequestDecision = { by: person.id, decision, reason, authTime, at: now, via: login.via };
      const decisions = [...r.decisions, d];
      let status: StartRequestStatus | undefined;
      if (decision === 'deny') status = 'denied';
      else if (isConfirmed(r, decisions)) status = 'confirmed';
      const done = await this.deps.store.startRequests.decide(r.id, d, status, now, {
        event, decision: decision === 'confirm' ? 'confirmed' : decision === 'approve' ? 'approved' : 'denied',
        developer: r.requester, template: r.template, reason,
        detail: { request: r.id, by: person.id, via: login.via, agent: r.agent, authTime: new Date(authTime).toISOString(), ...(status ? { status } : {}) },
      });
      if (!done) throw new BrokerError('conflict', `start request ${r.id} is no longer pending`);
      const after = (await this.deps.store.startRequests.get(r.id))!;
      const view = this.view(after);
      this.notify((e) => e.onDecided(view, decision));
      return after;
    });
  }

  /** `DELETE /v1/requests/:id`: the requester withdraws a pending or confirmed request. */
  async cancel(p: Principal, requestId: string): Promise<StartRequest> {
    const r = await this.deps.store.startRequests.get(requestId);
    const base = { event: 'request.cancel' as const, developer: p.id, template: r?.template, detail: { request: requestId } };
    if (!r || r.requester !== p.id) throw await this.refused(new BrokerError('not_found', `no start request ${requestId} of yours`), base);
    const moved = await this.deps.store.startRequests.transition(r.id, ['pending', 'confirmed'], 'cancelled', {
      event: 'request.cancel', decision: 'cancelled', developer: r.requester, template: r.template, detail: { request: r.id, agent: r.agent },
    });
    if (!moved) throw await this.refused(new BrokerError('conflict', `start request ${r.id} is ${r.status}: nothing to cancel`), base);
    return (await this.deps.store.startRequests.get(r.id))!;
  }

  /** Expires pending and confirmed requests past their time (`request.expire`); for the sweeper. */
  async expire(): Promise<StartRequest[]> {
    const out: StartRequest[] = [];
    for (const r of await this.deps.store.startRequests.expiredOpen(this.now())) {
      const moved = await this.deps.store.startRequests.transition(r.id, ['pending', 'confirmed'], 'expired', {
        event: 'request.expire', decision: 'expired', developer: r.requester, template: r.template, detail: { request: r.id, agent: r.agent, was: r.status },
      });
      if (!moved) continue;
      const after = (await this.deps.store.startRequests.get(r.id))!;
      out.push(after);
      const view = this.view(after);
      this.notify((e) => e.onExpired(view));
    }
    return out;
  }

  /** A request as its requester or one of its approvers may see it (404 for anybody else: no oracle). */
  async get(p: Principal, requestId: string): Promise<StartRequest> {
    const r = await this.deps.store.startRequests.get(requestId);
    if (!r || (r.requester !== p.id && !isApprover(r, p))) throw new BrokerError('not_found', `no start request ${requestId}`);
    return r;
  }

  /** A request by id, unchecked (the page checks who looks at it with `mayView`). */
  find(requestId: string): Promise<StartRequest | undefined> {
    return this.deps.store.startRequests.get(requestId);
  }

  mayView(r: StartRequest, p: Principal): boolean {
    return r.requester === p.id || isApprover(r, p);
  }

  /** The requester's requests, newest first. */
  recentOf(requester: string, limit = 20): Promise<StartRequest[]> {
    return this.deps.store.startRequests.ofRequester(requester, limit);
  }

  /** Pending requests `p` may approve or deny (never their own). */
  async listForApprover(p: Principal): Promise<StartRequest[]> {
    return (await this.deps.store.startRequests.pending()).filter((r) => r.requester !== p.id && isApprover(r, p));
  }

  /** What the request still waits for, for people. */
  waitingFor(r: StartRequest): string[] {
    if (r.status !== 'pending') return r.status === 'confirmed' ? [`${r.requester} to start it`] : [];
    const out: string[] = [];
    if (!r.decisions.some((d) => d.decision === 'confirm')) out.push(`${r.requester} to confirm (fresh IdP login)`);
    const missing = r.approvals - new Set(r.decisions.filter((d) => d.decision === 'approve').map((d) => d.by)).size;
    if (missing > 0) {
      const who = [...r.approvers.groups.map((g) => `group ${g}`), ...r.approvers.emails].join(', ');
      out.push(`${missing} more approval${missing > 1 ? 's' : ''} (${who})`);
    }
    return out;
  }

  view(r: StartRequest): StartRequestView {
    return {
      id: r.id, status: r.status, requester: r.requester, template: r.template, params: r.params, reason: r.reason, agent: r.agent,
      ttlSeconds: r.ttlSeconds, breakGlass: r.breakGlass,
      confirm: { mode: r.mode, maxAgeSeconds: r.maxAgeSeconds, approvals: r.approvals },
      waitingFor: this.waitingFor(r),
      decisions: r.decisions.map((d) => ({ by: d.by, decision: d.decision, reason: d.reason, authTime: new Date(d.authTime).toISOString(), at: new Date(d.at).toISOString(), via: d.via })),
      createdAt: new Date(r.createdAt).toISOString(), expiresAt: new Date(r.expiresAt).toISOString(), sessionId: r.sessionId,
      url: `${this.deps.publicUrl()}/requests/${r.id}`,
    };
  }

  /**
   * What the request would grant, for the people deciding: the session policy AWS would enforce
   * (rendered as at the start; `${session}` shown as `<session id>`, known only then), the managed
   * policies, the Vault policies and the session length.
   */
  grantOf(r: StartRequest): { sessionPolicy: string | null; managedPolicyArns: string[]; roleArn: string | null; vaultPolicies: string[]; sessionSeconds: number | null } {
    const t = this.deps.templates.get(r.template);
    if (!t) return { sessionPolicy: null, managedPolicyArns: [], roleArn: null, vaultPolicies: [], sessionSeconds: null };
    let sessionPolicy: string | null = null;
    if (t.aws) {
      try {
        sessionPolicy = JSON.stringify(JSON.parse(renderPolicy(t.aws.policy, { developer: r.requester, session: '<session id>', params: r.params })), null, 2);
      } catch { sessionPolicy = null; }
    }
    return {
      sessionPolicy, managedPolicyArns: t.aws?.managedPolicyArns ?? [], roleArn: t.aws?.roleArn ?? null,
      vaultPolicies: t.vault?.policies ?? [], sessionSeconds: sessionSeconds(t, r.ttlSeconds ?? undefined),
    };
  }
}

/** The requester's confirm, and (approvers mode, not break-glass) `approvals` distinct approvals. */
function isConfirmed(r: StartRequest, decisions: RequestDecision[]): boolean {
  if (!decisions.some((d) => d.decision === 'confirm')) return false;
  const approvers = new Set(decisions.filter((d) => d.decision === 'approve' && d.by !== r.requester).map((d) => d.by));
  return approvers.size >= r.approvals;
}
