import { queryAudit } from '../audit/principal-chain.js';
import { BrokerError } from '../errors.js';
import type { Principal } from '../identity/principal.js';
import type { Logger } from '../log.js';
import type { BrokerMetrics } from '../metrics/service-metrics.js';
import type { EndedSession, TaskSessionService } from '../sessions/task-session-service.js';
import type { AuditEvent, AuditRecord } from '../store/audit-event.js';
import type { AuditSearch } from '../store/audit-search.js';
import { ALL_TEMPLATES, type Freeze, type FreezeScope } from '../store/freezes.js';
import type { SessionFilter, Store, TaskSession } from '../store/store.js';
import type { TemplateCatalog } from '../templates/catalog.js';
import type { AdminAuditQuery, AdminAuditResponse, AdminSessionView } from '../wire/service-api.js';
import type { RevocationWarning, SessionToRevoke } from '../sessions/session-revocations.js';
import type { SinkStatus } from '../sinks/audit-sinks.js';

/** Who may use the control plane (the service config's `admins`). */
export interface AdminsConfig {
  groups: string[];
  emails: string[];
}

/**
 * Targeted STS revocation: a deny on the role for the session's tag (sessions/session-revocations.ts
 * in the service). Absent (unit tests): the service cannot recall STS credentials, and every answer
 * and audit record says so.
 */
export interface StsRevoker {
  revokeSessions(sessions: SessionToRevoke[], by: { admin: string; reason: string }): Promise<void>;
  /** Roles under the role-wide fallback, and denies IAM has not accepted yet. */
  warnings(): Promise<RevocationWarning[]>;
}

export interface AdminServiceDeps {
  admins: AdminsConfig;
  store: Pick<Store, 'sessions' | 'auditLog' | 'vaultTokens' | 'freezes' | 'startRequests'>;
  /** The audit log read by what an incident names (`GET /v1/admin/audit`). */
  auditSearch: AuditSearch;
  sessions: TaskSessionService;
  /** Revokes every login (refresh-token family) of a developer (identity/logins.ts). */
  logins: { revokeDeveloper(developer: string, reason: string, by?: string): Promise<number> };
  templates: Pick<TemplateCatalog, 'get' | 'ofSession' | 'versions'>;
  revocations?: StsRevoker | undefined;
  /** The audit sinks (sinks/audit-sinks.ts): their backlogs, for status. */
  sinks?: { refresh(): Promise<SinkStatus[]> } | undefined;
  log: Logger;
  now?: () => number;
  /** Refusals of the admin API are counted here (absent: not counted). */
  metrics?: BrokerMetrics | undefined;
}

export type StsRevocation = { status: 'requested' | 'not_configured' | 'failed' | 'nothing_issued'; message: string };

export interface AdminEndResult {
  ended: { session: AdminSessionView; vaultTokens: EndedSession['vaultTokens'] }[];
  alreadyEnded: string[];
  stsRevocation: StsRevocation;
}

export type EndSelector = { sessions: string[] } | { developer: string } | { template: string };

const NOT_CONFIGURED = 'STS revocation is not configured: AWS credentials already issued keep working until they expire';

/**
 * The control plane: who is an admin, and what an admin sees and stops. Every action is audited
 * with the admin's identity (`detail.admin`) and the admin's reason before its answer leaves; a
 * refusal to a non-admin is audited too. Freezes and the admin-ended state live in the store, so
 * a restart or a second service process sees them.
 */
export class AdminService {
  private readonly now: () => number;

  constructor(private readonly deps: AdminServiceDeps) {
    this.now = deps.now ?? Date.now;
  }

  /**
   * An admin by group (the login's groups, from the IdP), or by email, which must be IdP-verified
   * (Principal.email is '' otherwise), as for templates' allowed emails.
   */
  isAdmin(p: Principal): boolean {
    const { groups, emails } = this.deps.admins;
    return (p.email !== '' && emails.includes(p.email)) || p.groups.some((g) => groups.includes(g));
  }

  /** Refuses (403, audited) anyone who is not an admin; the message is fixed and says nothing of the configuration. */
  async requireAdmin(p: Principal, route: string): Promise<void> {
    if (this.isAdmin(p)) return;
    this.deps.metrics?.denial('admin.access', 'forbidden');
    await this.audit({ event: 'admin.access', decision: 'denied', developer: p.id, reason: 'not an administrator', detail: { route } });
    throw new BrokerError('forbidden', 'only administrators may use the admin API', { hint: 'the service config\'s admins: lists who they are' });
  }

  async listSessions(admin: Principal, filter: SessionFilter): Promise<AdminSessionView[]> {
    await this.audit({ event: 'admin.view', decision: 'allowed', developer: filter.developer, template: filter.template, detail: { admin: admin.id, filter: { ...filter } } });
    const found = await this.deps.store.sessions.search(filter);
    return Promise.all(found.map((s) => this.view(s)));
  }

  async session(admin: Principal, id: string): Promise<{ session: AdminSessionView; history: AuditRecord[] }> {
    const s = await this.deps.store.sessions.get(id);
    if (!s) throw new BrokerError('not_found', `no task session ${id}`, { hint: 'list them with: broker admin sessions' });
    await this.audit({ event: 'admin.view', decision: 'allowed', developer: s.developer, template: s.template, sessionId: s.id, detail: { admin: admin.id } });
    return { session: await this.view(s), history: await this.deps.store.auditLog.ofSession(s.id) };
  }

  /**
   * `GET /v1/admin/audit`: principal chains or records (audit/principal-chain.ts). A query is audited
   * once, at its first page: the pages after it (`after`), and `broker audit tail -f`'s polls, are
   * not, or following the log would fill it with records of its own reading.
   */
  async readAudit(admin: Principal, q: AdminAuditQuery): Promise<AdminAuditResponse> {
    const r = await queryAudit(this.deps.auditSearch, q, this.now());
    if (q.after === undefined) {
      const { after: _after, ...filter } = q;
      await this.audit({ event: 'admin.view', decision: 'allowed', detail: { admin: admin.id, route: 'audit', filter } });
    }
    return r;
  }

  /** `broker admin end`: ends the sessions selected (no re-issue), revokes their Vault tokens, asks for STS revocation. */
  async end(admin: Principal, selector: EndSelector, reason: string): Promise<AdminEndResult> {
    const targets = await this.select(selector);
    const r = await this.endAll(admin, targets, reason);
    await this.audit({
      event: 'admin.end', decision: 'ended', reason, ...('developer' in selector ? { developer: selector.developer } : {}), ...('template' in selector ? { template: selector.template } : {}),
      detail: { admin: admin.id, selector, sessions: r.ended.map((e) => e.session.id), alreadyEnded: r.alreadyEnded, stsRevocation: r.stsRevocation.status },
    });
    return r;
  }

  /**
   * `broker admin offboard`: ends every session of the developer, revokes every login they hold
   * (their refresh tokens buy nothing more, their access tokens are refused from the next request),
   * and cancels their start requests still waiting, so nothing they hold keeps working.
   */
  async offboard(admin: Principal, developer: string, reason: string): Promise<AdminEndResult & { developer: string; loginsRevoked: number; requestsCancelled: string[] }> {
    // Logins first: from here the developer can start nothing new while the rest is done.
    const loginsRevoked = await this.deps.logins.revokeDeveloper(developer, reason, admin.id);
    const requestsCancelled: string[] = [];
    for (const q of await this.deps.store.startRequests.ofRequester(developer, 1000)) {
      if (q.status !== 'pending' && q.status !== 'confirmed') continue;
      const moved = await this.deps.store.startRequests.transition(q.id, ['pending', 'confirmed'], 'cancelled', {
        event: 'request.cancel', decision: 'cancelled', developer, template: q.template, reason, detail: { request: q.id, admin: admin.id, offboarded: true },
      });
      if (moved) requestsCancelled.push(q.id);
    }
    const r = await this.endAll(admin, await this.deps.store.sessions.active(developer), reason);
    await this.audit({
      event: 'admin.offboard', decision: 'revoked', developer, reason,
      detail: { admin: admin.id, sessions: r.ended.map((e) => e.session.id), loginsRevoked, requestsCancelled, stsRevocation: r.stsRevocation.status },
    });
    return { ...r, developer, loginsRevoked, requestsCancelled };
  }

  /** `broker admin freeze`: starts and re-issues of the scope are refused (423) until unfrozen; `revoke` also ends what is out there. */
  async freeze(admin: Principal, scope: FreezeScope, reason: string, revoke: boolean): Promise<AdminEndResult & { freeze: Freeze }> {
    this.knownScope(scope);
    const f: Freeze = { scope, reason, by: admin.id, at: this.now() };
    await this.deps.store.freezes.freeze(f, {
      event: 'admin.freeze', decision: 'frozen', reason, ...(scope === ALL_TEMPLATES ? {} : { template: scope }), detail: { admin: admin.id, scope, revoke },
    });
    const none: AdminEndResult = { ended: [], alreadyEnded: [], stsRevocation: { status: 'nothing_issued', message: 'no session was ended (no --revoke)' } };
    if (!revoke) return { ...none, freeze: f };
    const targets = await this.deps.store.sessions.search({ activeOnly: true, ...(scope === ALL_TEMPLATES ? {} : { template: scope }), limit: 100_000 });
    const r = await this.endAll(admin, targets, reason);
    await this.audit({
      event: 'admin.end', decision: 'ended', reason, ...(scope === ALL_TEMPLATES ? {} : { template: scope }),
      detail: { admin: admin.id, selector: { freeze: scope }, sessions: r.ended.map((e) => e.session.id), stsRevocation: r.stsRevocation.status },
    });
    return { ...r, freeze: f };
  }

  async unfreeze(admin: Principal, scope: FreezeScope, reason: string): Promise<Freeze[]> {
    const lifted = await this.deps.store.freezes.unfreeze(scope, {
      event: 'admin.unfreeze', decision: 'unfrozen', reason, ...(scope === ALL_TEMPLATES ? {} : { template: scope }), detail: { admin: admin.id, scope },
    });
    if (!lifted) {
      throw new BrokerError('not_found', scope === ALL_TEMPLATES ? 'there is no freeze of all templates' : `"${scope}" is not frozen on its own`, {
        hint: 'see the freezes in force with: broker admin freezes',
      });
    }
    return this.deps.store.freezes.list();
  }

  freezes(): Promise<Freeze[]> {
    return this.deps.store.freezes.list();
  }

  /** `broker admin status`: the templates in force, freezes, revocations that need attention, and the audit sinks' backlogs. */
  async status(): Promise<{ templates: { name: string; version: string }[]; activeSessions: number; freezes: Freeze[]; revocationWarnings: RevocationWarning[]; auditSinks: SinkStatus[] }> {
    const versions = this.deps.templates.versions();
    // Active sessions are bounded (limits.maxActiveSessions per developer), so reading them is cheap.
    const active = await this.deps.store.sessions.search({ activeOnly: true, limit: 1_000_000 });
    return {
      templates: Object.keys(versions).sort().map((name) => ({ name, version: versions[name]! })),
      activeSessions: active.length,
      freezes: await this.deps.store.freezes.list(),
      revocationWarnings: (await this.deps.revocations?.warnings()) ?? [],
      auditSinks: (await this.deps.sinks?.refresh()) ?? [],
    };
  }

  private knownScope(scope: FreezeScope): void {
    if (scope !== ALL_TEMPLATES && !this.deps.templates.get(scope)) {
      throw new BrokerError('not_found', `no task template named "${scope}"`, { hint: 'freeze a configured template, or all of them with --all' });
    }
  }

  /** The sessions an end names; an id that names no session refuses the whole request (nothing ended). */
  private async select(selector: EndSelector): Promise<TaskSession[]> {
    if ('sessions' in selector) {
      const found: TaskSession[] = [];
      for (const id of new Set(selector.sessions)) {
        const s = await this.deps.store.sessions.get(id);
        if (!s) throw new BrokerError('not_found', `no task session ${id}`, { hint: 'nothing was ended; list them with: broker admin sessions' });
        found.push(s);
      }
      return found;
    }
    if ('developer' in selector) return this.deps.store.sessions.active(selector.developer);
    return this.deps.store.sessions.search({ template: selector.template, activeOnly: true, limit: 100_000 });
  }

  private async endAll(admin: Principal, targets: TaskSession[], reason: string): Promise<AdminEndResult> {
    const ended: AdminEndResult['ended'] = [];
    const alreadyEnded: string[] = [];
    const revoked: SessionToRevoke[] = [];
    for (const s of targets) {
      const r = s.endedAt === null ? await this.deps.sessions.endByAdmin(s, admin.id, reason) : undefined;
      if (!r) {
        alreadyEnded.push(s.id);
        continue;
      }
      const after = (await this.deps.store.sessions.get(s.id)) ?? s;
      const view = await this.view(after);
      ended.push({ session: view, vaultTokens: r.vaultTokens });
      const roleArn = (await this.deps.templates.ofSession(s))?.aws?.roleArn;
      const until = Math.max(0, ...view.credentials.map((c) => (c.expiration ? Date.parse(c.expiration) : 0)));
      if (roleArn && until > this.now()) revoked.push({ id: s.id, developer: s.developer, roleArn, until });
    }
    this.deps.log.info({ admin: admin.id, ended: ended.map((e) => e.session.id), alreadyEnded }, 'sessions ended by an administrator');
    return { ended, alreadyEnded, stsRevocation: await this.revokeSts(revoked, admin, reason) };
  }

  /** The seam to targeted STS revocation; never fails the end itself (the sessions are ended either way). */
  private async revokeSts(sessions: SessionToRevoke[], admin: Principal, reason: string): Promise<StsRevocation> {
    if (sessions.length === 0) return { status: 'nothing_issued', message: 'no AWS credentials of these sessions are still valid' };
    if (!this.deps.revocations) return { status: 'not_configured', message: NOT_CONFIGURED };
    try {
      await this.deps.revocations.revokeSessions(sessions, { admin: admin.id, reason });
      return { status: 'requested', message: `a deny for ${sessions.length} session(s) was requested on their roles; IAM applies it within seconds to minutes` };
    } catch (e) {
      this.deps.log.error({ err: (e as Error).message, sessions: sessions.map((s) => s.id) }, 'STS revocation failed');
      return { status: 'failed', message: `STS revocation failed: ${(e as Error).message}` };
    }
  }

  /** A session as an admin sees it, assembled from the store and its audit records (never a secret). */
  private async view(s: TaskSession): Promise<AdminSessionView> {
    const records = await this.deps.store.auditLog.ofSession(s.id);
    const start = records.find((r) => r.event === 'session.start' && r.decision === 'allowed');
    const d = start?.detail ?? {};
    const now = this.now();
    const state = s.endedAt !== null ? 'ended' : s.expiresAt <= now ? 'expired' : 'active';
    const tokens = await this.deps.store.vaultTokens.ofSession(s.id);
    return {
      ...this.deps.sessions.view(s),
      developer: s.developer,
      state,
      endedAt: s.endedAt === null ? null : new Date(s.endedAt).toISOString(),
      endReason: s.endReason,
      endedBy: s.endedBy,
      timeLeftSeconds: state === 'active' ? Math.floor((s.expiresAt - now) / 1000) : 0,
      startRequest: typeof d.request === 'string'
        ? { id: d.request, confirmedBy: strings(d.confirmedBy), approvedBy: strings(d.approvedBy), breakGlass: d.breakGlass === true }
        : null,
      credentials: records.filter((r) => (r.event === 'credentials.issue' || r.event === 'credentials.reissue') && r.decision === 'issued' && r.accessKeyId)
        .map((r) => ({ accessKeyId: r.accessKeyId!, expiration: r.expiration ?? null, issuedAt: r.at })),
      vaultTokens: tokens.map((t) => ({ accessor: t.accessor, revoked: t.revokedAt !== null })),
    };
  }

  private audit(e: AuditEvent): Promise<void> {
    return this.deps.store.auditLog.append(e);
  }
}

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}
