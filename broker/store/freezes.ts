/**
 * Freezes (`broker admin freeze`): the kill switch an administrator pulls on one template or on all
 * of them. While a freeze is in force the service starts and re-issues nothing under what it
 * covers. Kept in the store, not in memory, so a restart or a second service process on the same
 * store sees it; each change is written with its audit record in one transaction.
 */
import type { AuditEvent } from './audit-event.js';

/** `*` freezes every template; otherwise a template name. */
export type FreezeScope = '*' | (string & {});
export const ALL_TEMPLATES: FreezeScope = '*';

export interface Freeze {
  scope: FreezeScope;
  reason: string;
  /** The administrator who froze it. */
  by: string;
  at: number;
}

export interface FreezeRepository {
  /** Freezes `scope` (or replaces its reason) and appends `e`, atomically. */
  freeze(f: Freeze, e: AuditEvent): Promise<void>;
  /** Lifts the freeze of `scope` and appends `e`, atomically; false if it was not frozen (nothing appended). */
  unfreeze(scope: FreezeScope, e: AuditEvent): Promise<boolean>;
  /** Every freeze in force, oldest first. */
  list(): Promise<Freeze[]>;
  /** The freeze that covers `template` (all templates first), if any. */
  covering(template: string): Promise<Freeze | undefined>;
}
