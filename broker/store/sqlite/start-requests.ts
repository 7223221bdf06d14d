import type { AuditEvent } from '../audit-event.js';
import type { NewStartRequest, RequestDecision, StartRequest, StartRequestRepository, StartRequestStatus } from '../start-requests.js';
import type { SqliteAuditLog } from './audit-log.js';
import type { SqliteDatabase } from './database.js';

interface Row {
  id: string; requester: string; template: string; params: string; reason: string; agent: string; ttl_seconds: number | null;
  break_glass: number; mode: string; max_age_seconds: number; approvals: number; approvers: string; digest: string; status: string;
  created_at: number; expires_at: number; session_id: string | null; template_version: string | null;
}
interface DecisionRow { by: string; decision: string; reason: string; auth_time: number; at: number; via: string }

/** Start requests in SQLite (`start_requests`, `start_request_decisions`); each change with its audit record. */
export class SqliteStartRequests implements StartRequestRepository {
  private readonly stmts;

  constructor(private readonly sql: SqliteDatabase, private readonly audit: SqliteAuditLog) {
    const q = (s: string) => sql.prepare(s);
    this.stmts = {
      insert: q(`INSERT INTO start_requests (id, requester, template, params, reason, agent, ttl_seconds, break_glass, mode,
        max_age_seconds, approvals, approvers, digest, status, created_at, expires_at, template_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,'pending',?,?,?)`),
      get: q('SELECT * FROM start_requests WHERE id = ?'),
      decisions: q('SELECT * FROM start_request_decisions WHERE request_id = ? ORDER BY seq'),
      findPending: q("SELECT * FROM start_requests WHERE requester = ? AND digest = ? AND status = 'pending' AND expires_at > ? ORDER BY created_at DESC LIMIT 1"),
      ofRequester: q('SELECT * FROM start_requests WHERE requester = ? ORDER BY created_at DESC LIMIT ?'),
      pending: q("SELECT * FROM start_requests WHERE status = 'pending' AND expires_at > ? ORDER BY created_at LIMIT ?"),
      countPending: q("SELECT COUNT(*) AS n FROM start_requests WHERE status = 'pending' AND expires_at > ?"),
      claimPending: q("UPDATE start_requests SET status = status WHERE id = ? AND status = 'pending' AND expires_at > ?"),
      setStatus: q('UPDATE start_requests SET status = ?, session_id = COALESCE(?, session_id) WHERE id = ? AND status = ?'),
      insertDecision: q(`INSERT INTO start_request_decisions (request_id, seq, by, decision, reason, auth_time, at, via)
        VALUES (?, (SELECT COUNT(*) FROM start_request_decisions WHERE request_id = ?), ?, ?, ?, ?, ?, ?)`),
      expiredOpen: q("SELECT * FROM start_requests WHERE status IN ('pending', 'confirmed') AND expires_at <= ? ORDER BY expires_at LIMIT ?"),
    };
  }

  private toRequest(r: Row): StartRequest {
    const decisions = (this.stmts.decisions.all(r.id) as unknown as DecisionRow[]).map((d): RequestDecision => ({
      by: d.by, decision: d.decision as RequestDecision['decision'], reason: d.reason, authTime: d.auth_time, at: d.at, via: d.via as RequestDecision['via'],
    }));
    return {
      id: r.id, requester: r.requester, template: r.template, params: JSON.parse(r.params) as Record<string, string>, reason: r.reason,
      agent: r.agent, ttlSeconds: r.ttl_seconds, breakGlass: r.break_glass === 1, mode: r.mode as StartRequest['mode'],
      maxAgeSeconds: r.max_age_seconds, approvals: r.approvals, approvers: JSON.parse(r.approvers) as StartRequest['approvers'],
      digest: r.digest, status: r.status as StartRequestStatus, createdAt: r.created_at, expiresAt: r.expires_at, sessionId: r.session_id, decisions,
      templateVersion: r.template_version,
    };
  }

  private rows(rows: unknown[]): StartRequest[] {
    return (rows as Row[]).map((r) => this.toRequest(r));
  }

  async create(r: NewStartRequest, e: AuditEvent): Promise<void> {
    this.sql.write(`${e.event} ${e.decision}`, () => {
      this.stmts.insert.run(r.id, r.requester, r.template, JSON.stringify(r.params), r.reason, r.agent, r.ttlSeconds, r.breakGlass ? 1 : 0,
        r.mode, r.maxAgeSeconds, r.approvals, JSON.stringify(r.approvers), r.digest, r.createdAt, r.expiresAt, r.templateVersion ?? null);
      this.audit.appendInTransaction(e);
    });
  }

  async get(id: string): Promise<StartRequest | undefined> {
    const r = this.stmts.get.get(id) as unknown as Row | undefined;
    return r ? this.toRequest(r) : undefined;
  }

  async findPending(requester: string, digest: string): Promise<StartRequest | undefined> {
    const r = this.stmts.findPending.get(requester, digest, this.sql.now()) as unknown as Row | undefined;
    return r ? this.toRequest(r) : undefined;
  }

  async ofRequester(requester: string, limit = 50): Promise<StartRequest[]> {
    return this.rows(this.stmts.ofRequester.all(requester, limit));
  }

  async pending(limit = 200): Promise<StartRequest[]> {
    return this.rows(this.stmts.pending.all(this.sql.now(), limit));
  }

  async countPending(): Promise<number> {
    return (this.stmts.countPending.get(this.sql.now()) as { n: number }).n;
  }

  async decide(id: string, d: RequestDecision, status: StartRequestStatus | undefined, now: number, e: AuditEvent): Promise<boolean> {
    return this.sql.write(`${e.event} ${e.decision}`, () => {
      if (this.stmts.claimPending.run(id, now).changes === 0) return false;
      this.stmts.insertDecision.run(id, id, d.by, d.decision, d.reason, d.authTime, d.at, d.via);
      if (status && status !== 'pending') this.stmts.setStatus.run(status, null, id, 'pending');
      this.audit.appendInTransaction(e);
      return true;
    });
  }

  async transition(id: string, from: StartRequestStatus[], to: StartRequestStatus, e: AuditEvent | undefined, sessionId?: string): Promise<boolean> {
    return this.sql.write(e ? `${e.event} ${e.decision}` : `start request ${to}`, () => {
      const changed = from.some((f) => this.stmts.setStatus.run(to, sessionId ?? null, id, f).changes > 0);
      if (changed && e) this.audit.appendInTransaction(e);
      return changed;
    });
  }

  async expiredOpen(now: number, limit = 500): Promise<StartRequest[]> {
    return this.rows(this.stmts.expiredOpen.all(now, limit));
  }
}
