import type { AuditEvent } from '../audit-event.js';
import type { NewTemplateVersion, TemplateVersionRecord, TemplateVersionRepository } from '../template-versions.js';
import type { SqliteAuditLog } from './audit-log.js';
import type { SqliteDatabase } from './database.js';

interface Row { name: string; version: string; definition: string; file: string; first_loaded_at: number }

/** Template versions in SQLite (`template_versions`), first load wins. */
export class SqliteTemplateVersions implements TemplateVersionRepository {
  private readonly stmts;

  constructor(private readonly sql: SqliteDatabase, private readonly audit: SqliteAuditLog) {
    const q = (s: string) => sql.prepare(s);
    this.stmts = {
      insert: q('INSERT INTO template_versions (name, version, definition, file, first_loaded_at) VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING'),
      get: q('SELECT * FROM template_versions WHERE name = ? AND version = ?'),
    };
  }

  async record(versions: readonly NewTemplateVersion[], e?: AuditEvent): Promise<void> {
    this.sql.write(e ? `${e.event} ${e.decision}` : 'the loaded template versions', () => {
      const now = this.sql.now();
      for (const v of versions) this.stmts.insert.run(v.name, v.version, JSON.stringify(v.definition), v.file, now);
      if (e) this.audit.appendInTransaction(e);
    });
  }

  async get(name: string, version: string): Promise<TemplateVersionRecord | undefined> {
    const r = this.stmts.get.get(name, version) as Row | undefined;
    return r ? { name: r.name, version: r.version, definition: JSON.parse(r.definition) as unknown, file: r.file, firstLoadedAt: r.first_loaded_at } : undefined;
  }
}
