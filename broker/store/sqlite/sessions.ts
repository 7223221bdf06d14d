import type { StatementSync } from 'node:sqlite';
import type { AuditEvent } from '../audit-event.js';
import type { NewTaskSession, SessionFilter, SessionRepository, TaskSession, TemplateUsage } from '../store.js';
import type { SqliteAuditLog } from './audit-log.js';
import type { SqliteDatabase } from './database.js';

interface SessionRow {
  id: string; developer: string; template: string; params: string; reason: string; agent: string;
  role_session_name: string; created_at: number; expires_at: number; ended_at: number | null; end_reason: string | null;
  ended_by: string | null;
  template_version: string | null;
}

function toSession(r: SessionRow): TaskSession {
  return {
    id: r.id, developer: r.developer, template: r.template, params: JSON.parse(r.params) as Record<string, string>,
    reason: r.reason, agent: r.agent, roleSessionName: r.role_session_name, createdAt: r.created_at,
    expiresAt: r.expires_at, endedAt: r.ended_at, endReason: r.end_reason, endedBy: r.ended_by ?? null, templateVersion: r.template_version,
  };
}

const rows = (stmt: StatementSync, ...args: (string | number | null)[]) => (stmt.all(...args) as unknown as SessionRow[]).map(toSession);

/** Task sessions in SQLite (`task_sessions`); each change with its audit record, in one transaction. */
export class SqliteSessionRepository implements SessionRepository {
  private readonly stmts;

  constructor(private readonly sql: SqliteDatabase, private readonly audit: SqliteAuditLog) {
    const q = (s: string) => sql.prepare(s);
    this.stmts = {
      insert: q(`INSERT INTO task_sessions (id, developer, template, params, reason, agent, role_session_name,
        created_at, expires_at, template_version) VALUES (?,?,?,?,?,?,?,?,?,?)`),
      usage: q(`SELECT
        (SELECT COUNT(*) FROM task_sessions WHERE template = ?1 AND ended_at IS NULL AND expires_at > ?2) AS open,
        (SELECT COUNT(*) FROM task_sessions WHERE template = ?1 AND created_at >= ?3) AS starts,
        (SELECT MIN(created_at) FROM task_sessions WHERE template = ?1 AND created_at >= ?3) AS oldest_start,
        (SELECT COUNT(*) FROM task_sessions WHERE template = ?1 AND created_at >= ?3 AND developer = ?4) AS developer_starts,
        (SELECT MIN(created_at) FROM task_sessions WHERE template = ?1 AND created_at >= ?3 AND developer = ?4) AS oldest_developer_start`),
      get: q('SELECT * FROM task_sessions WHERE id = ?'),
      active: q('SELECT * FROM task_sessions WHERE developer = ? AND ended_at IS NULL AND expires_at > ? ORDER BY created_at'),
      allActive: q('SELECT * FROM task_sessions WHERE ended_at IS NULL AND expires_at > ? ORDER BY created_at'),
      countActive: q('SELECT COUNT(*) AS n FROM task_sessions WHERE ended_at IS NULL AND expires_at > ?'),
      end: q('UPDATE task_sessions SET ended_at = ?, end_reason = ?, ended_by = ? WHERE id = ? AND ended_at IS NULL'),
      // Every filter is optional: a NULL parameter matches everything.
      search: q(`SELECT * FROM task_sessions WHERE (?1 IS NULL OR developer = ?1) AND (?2 IS NULL OR template = ?2)
        AND (?3 IS NULL OR agent = ?3) AND (?4 = 0 OR (ended_at IS NULL AND expires_at > ?5))
        AND (?6 IS NULL OR created_at >= ?6 OR (ended_at IS NULL AND expires_at > ?5))
        ORDER BY created_at DESC LIMIT ?7`),
      setAgent: q('UPDATE task_sessions SET agent = ? WHERE id = ? AND ended_at IS NULL'),
      expiredOpen: q('SELECT * FROM task_sessions WHERE ended_at IS NULL AND expires_at <= ? ORDER BY expires_at'),
      // Open sessions created before a cutoff whose start never completed: the last grant of a start
      // is the AWS one when it has one (task-session-service.ts issues Vault first), so complete
      // means a `credentials.issue` issued record, or for a Vault-only start a `vault.issue` one.
      incompleteStarts: q(`SELECT s.* FROM task_sessions s
        WHERE s.ended_at IS NULL AND s.expires_at > ? AND s.created_at <= ?
        AND NOT EXISTS (SELECT 1 FROM audit a WHERE a.session_id = s.id AND a.event = 'credentials.issue' AND a.decision = 'issued')
        AND (EXISTS (SELECT 1 FROM audit a, json_each(a.detail, '$.grants') g
                     WHERE a.session_id = s.id AND a.event = 'session.start' AND a.decision = 'allowed' AND g.value = 'aws')
             OR NOT EXISTS (SELECT 1 FROM audit a WHERE a.session_id = s.id AND a.event = 'vault.issue' AND a.decision = 'issued'))
        ORDER BY s.created_at LIMIT ?`),
    };
  }

  async create(s: NewTaskSession, e: AuditEvent, check?: { since: number; refuse: (usage: TemplateUsage) => void }): Promise<void> {
    this.sql.write(`${e.event} ${e.decision}`, () => {
      if (check) {
        const u = this.stmts.usage.get(s.template, this.sql.now(), check.since, s.developer) as {
          open: number; starts: number; oldest_start: number | null; developer_starts: number; oldest_developer_start: number | null;
        };
        check.refuse({ open: u.open, starts: u.starts, oldestStart: u.oldest_start, developerStarts: u.developer_starts, oldestDeveloperStart: u.oldest_developer_start });
      }
      this.stmts.insert.run(s.id, s.developer, s.template, JSON.stringify(s.params), s.reason, s.agent,
        s.roleSessionName, s.createdAt, s.expiresAt, s.templateVersion ?? null);
      this.audit.appendInTransaction(e);
    });
  }

  async get(id: string): Promise<TaskSession | undefined> {
    const r = this.stmts.get.get(id) as SessionRow | undefined;
    return r ? toSession(r) : undefined;
  }

  async active(developer?: string): Promise<TaskSession[]> {
    const now = this.sql.now();
    return developer === undefined ? rows(this.stmts.allActive, now) : rows(this.stmts.active, developer, now);
  }

  async countActive(): Promise<number> {
    return (this.stmts.countActive.get(this.sql.now()) as { n: number }).n;
  }

  async end(id: string, reason: string, e: AuditEvent, by?: string): Promise<boolean> {
    return this.sql.write(`${e.event} ${e.decision}`, () => {
      const changed = this.stmts.end.run(this.sql.now(), reason, by ?? null, id).changes > 0;
      if (changed) this.audit.appendInTransaction(e);
      return changed;
    });
  }

  async search(f: SessionFilter): Promise<TaskSession[]> {
    return rows(this.stmts.search, f.developer ?? null, f.template ?? null, f.agent ?? null,
      f.activeOnly ? 1 : 0, this.sql.now(), f.since ?? null, f.limit ?? 500);
  }

  async setAgent(id: string, agent: string, e: AuditEvent): Promise<boolean> {
    return this.sql.write(`${e.event} ${e.decision}`, () => {
      const changed = this.stmts.setAgent.run(agent, id).changes > 0;
      if (changed) this.audit.appendInTransaction(e);
      return changed;
    });
  }

  async expiredOpen(): Promise<TaskSession[]> {
    return rows(this.stmts.expiredOpen, this.sql.now());
  }

  async incompleteStarts(createdBefore: number, limit = 500): Promise<TaskSession[]> {
    return rows(this.stmts.incompleteStarts, this.sql.now(), createdBefore, limit);
  }
}
