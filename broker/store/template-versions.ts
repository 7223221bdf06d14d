/**
 * The versions of task templates the service has loaded (templates/catalog.ts), by name and
 * version, each with its parsed form: a session keeps the version it started under until it ends,
 * and this is where that version is found again after a reload removed or changed it, after a
 * restart, or by another service process sharing the store. Rows are never changed: a version is
 * its content.
 */
import type { AuditEvent } from './audit-event.js';

export interface TemplateVersionRecord {
  name: string;
  version: string;
  /** The template's parsed form (templates/schema.ts output), as JSON. No secret: templates hold none. */
  definition: unknown;
  /** The file it was loaded from (its problems, if it ever fails to load again, name it). */
  file: string;
  /** When this version was first loaded (by any service process). */
  firstLoadedAt: number;
}

export type NewTemplateVersion = Omit<TemplateVersionRecord, 'firstLoadedAt'>;

export interface TemplateVersionRepository {
  /** Records the versions not recorded yet, and appends `e` when given, atomically. */
  record(versions: readonly NewTemplateVersion[], e?: AuditEvent): Promise<void>;
  get(name: string, version: string): Promise<TemplateVersionRecord | undefined>;
}
