import type { AuditEvent } from '../audit-event.js';
import { ALL_TEMPLATES, type Freeze, type FreezeRepository, type FreezeScope } from '../freezes.js';
import type { SqliteAuditLog } from './audit-log.js';
import type { SqliteDatabase } from './database.js';

interface FreezeRow { scope: string; reason: string; frozen_by: string; at: number }

const toFreeze = (r: FreezeRow): Freeze => ({ scope: r.scope, reason: r.reason, by: r.frozen_by, at: r.at });

/** Freezes in SQLite (`freezes`); each change with its audit record, in one transaction. */
export class SqliteFreezes implements FreezeRepository {
  private readonly stmts;

  constructor(private readonly sql: SqliteDatabase, private readonly audit: SqliteAuditLog) {
    const q = (s: string) => sql.prepare(s);
    this.stmts = {
      upsert: q(`INSERT INTO freezes (scope, reason, frozen_by, at) VALUES (?,?,?,?)
        ON CONFLICT (scope) DO UPDATE SET reason = excluded.reason, frozen_by = excluded.frozen_by, at = excluded.at`),
      remove: q('DELETE FROM freezes WHERE scope = ?'),
      list: q('SELECT * FROM freezes ORDER BY at, scope'),
      // The freeze of every template wins over a template's own: its reason is the one to show.
      covering: q(`SELECT * FROM freezes WHERE scope = ? OR scope = ? ORDER BY scope = ? DESC LIMIT 1`),
    };
  }

  async freeze(f: Freeze, e: AuditEvent): Promise<void> {
    this.sql.write(`${e.event} ${e.decision}`, () => {
      this.stmts.upsert.run(f.scope, f.reason, f.by, f.at);
      this.audit.appendInTransaction(e);
    });
  }

  async unfreeze(scope: FreezeScope, e: AuditEvent): Promise<boolean> {
    return this.sql.write(`${e.event} ${e.decision}`, () => {
      const changed = this.stmts.remove.run(scope).changes > 0;
      if (changed) this.audit.appendInTransaction(e);
      return changed;
    });
  }

  async list(): Promise<Freeze[]> {
    return (this.stmts.list.all() as unknown as FreezeRow[]).map(toFreeze);
  }

  async covering(template: string): Promise<Freeze | undefined> {
    const r = this.stmts.covering.get(ALL_TEMPLATES, template, ALL_TEMPLATES) as FreezeRow | undefined;
    return r ? toFreeze(r) : undefined;
  }
}
