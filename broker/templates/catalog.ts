/**
 * The set of task templates in force, and its reload without a restart (README, "Changing templates
 * while the service runs"). A reload reads the whole `policiesDir` with the loader of the service's
 * start (load.ts) and takes the new set only if every template in it is valid; otherwise the set in
 * force stays, and the problems (file, field, hint) are logged and returned. A taken set applies to
 * new starts; a running session keeps the version it started under until it ends (ofSession), found
 * again in the store (store/template-versions.ts) when the set no longer holds it.
 */
import type { Logger } from '../log.js';
import type { AuditEvent } from '../store/audit-event.js';
import type { Store } from '../store/store.js';
import { loadTemplates, loadValidTemplates, templateFromDefinition, type TemplateProblem } from './load.js';
import type { RawTemplate, TaskTemplate } from './schema.js';

/** What made a reload happen: a change in policiesDir, SIGHUP to the service, an admin's request. */
export type ReloadTrigger = 'watch' | 'signal' | 'admin';

export interface ReloadBy {
  trigger: ReloadTrigger;
  /** For trigger `admin`: who asked (their identity), and why. */
  admin?: string | undefined;
  reason?: string | undefined;
}

export interface ReloadResult {
  /** false: the set in force did not change; `problems` says why. */
  ok: boolean;
  trigger: ReloadTrigger;
  /** Template name → version, before the reload and in force after it (the same when not ok). */
  before: Record<string, string>;
  after: Record<string, string>;
  added: { name: string; version: string }[];
  removed: { name: string; version: string }[];
  changed: { name: string; from: string; to: string }[];
  problems: TemplateProblem[];
}

export interface TemplateCatalogDeps {
  /** Where reload() reads the templates from. */
  dir: string;
  store: Pick<Store, 'templateVersions' | 'auditLog'>;
  log: Logger;
  now?: () => number;
}

/** At most this many problems go into a failed reload's audit record (all of them are logged and returned). */
const MAX_AUDITED_PROBLEMS = 20;
/** Older versions kept parsed in memory; past it they are read from the store again when needed. */
const MAX_CACHED_OLD_VERSIONS = 256;

export class TemplateCatalog {
  private current: Map<string, TaskTemplate>;
  /** Templates a reload removed, and when: a start of one is refused with that said. */
  private readonly removed = new Map<string, number>();
  /** `name@version` → template: versions running sessions started under that the set no longer holds. */
  private readonly older = new Map<string, TaskTemplate>();
  /** Reloads run one at a time, in order. */
  private running: Promise<unknown> = Promise.resolve();
  private readonly now: () => number;

  /**
   * A catalog of `templates`. Without deps (tests, tools) it cannot reload and knows only the
   * versions it holds.
   */
  constructor(templates: Map<string, TaskTemplate>, private readonly deps?: TemplateCatalogDeps) {
    this.current = templates;
    this.now = deps?.now ?? Date.now;
  }

  /** The service's start: the templates of `dir`, valid or a thrown `invalid_template`, their versions recorded in the store. */
  static async open(deps: TemplateCatalogDeps): Promise<TemplateCatalog> {
    const { templates, definitions } = loadValidTemplates(deps.dir);
    await deps.store.templateVersions.record(versionRecords(templates, definitions));
    return new TemplateCatalog(templates, deps);
  }

  get(name: string): TaskTemplate | undefined {
    return this.current.get(name);
  }

  values(): TaskTemplate[] {
    return [...this.current.values()];
  }

  names(): string[] {
    return [...this.current.keys()];
  }

  /** Name → version of the set in force. */
  versions(): Record<string, string> {
    return Object.fromEntries([...this.current.values()].map((t) => [t.name, t.version]));
  }

  /** When a reload removed the template `name` (absent: it was never removed, or came back). */
  removedAt(name: string): number | undefined {
    return this.removed.get(name);
  }

  /**
   * The template a session started under: its version, whether or not the set in force still holds
   * it (undefined only if the store has no such version either). A session recorded before versions
   * were (templateVersion null) gets the template of its name in force.
   */
  async ofSession(s: { template: string; templateVersion: string | null }): Promise<TaskTemplate | undefined> {
    const known = this.peek(s);
    if (known || s.templateVersion === null || !this.deps) return known;
    const record = await this.deps.store.templateVersions.get(s.template, s.templateVersion);
    if (!record) return undefined;
    const { template, problems } = templateFromDefinition(record.definition, record.file);
    if (!template) {
      this.deps.log.error({ template: s.template, version: s.templateVersion, problems }, 'a stored template version no longer loads; its sessions get nothing more');
      return undefined;
    }
    if (this.older.size >= MAX_CACHED_OLD_VERSIONS) this.older.clear();
    this.older.set(`${s.template}@${s.templateVersion}`, template);
    return template;
  }

  /** ofSession without the store: what memory holds (for views; undefined when not at hand). */
  peek(s: { template: string; templateVersion: string | null }): TaskTemplate | undefined {
    const current = this.current.get(s.template);
    if (s.templateVersion === null || current?.version === s.templateVersion) return current;
    return this.older.get(`${s.template}@${s.templateVersion}`);
  }

  /**
   * Reads `dir` again. A valid set replaces the one in force (its versions recorded and
   * `policy.reload updated` audited, atomically, before it applies); an invalid one changes
   * nothing (`policy.reload failed`, with the problems). A reload that finds exactly the versions in
   * force records nothing, unless an admin asked for it. Never throws for what is in the files.
   */
  reload(by: ReloadBy): Promise<ReloadResult> {
    const next = this.running.then(() => this.reloadNow(by));
    this.running = next.catch(() => undefined);
    return next;
  }

  private async reloadNow(by: ReloadBy): Promise<ReloadResult> {
    const deps = this.deps;
    if (!deps) throw new TypeError('this template catalog was made without a directory to reload from');
    const before = this.versions();
    const loaded = loadTemplates(deps.dir);
    const base = { event: 'policy.reload' as const, ...(by.reason ? { reason: by.reason } : {}) };
    const who = { trigger: by.trigger, ...(by.admin ? { by: by.admin } : {}) };
    if (loaded.problems.length) {
      const result = unchanged(by.trigger, before, loaded.problems);
      deps.log.error({ ...who, dir: deps.dir, problems: loaded.problems }, `template reload refused: ${loaded.problems.length} problem(s); the templates in force stay`);
      await this.audit({
        ...base, decision: 'failed',
        detail: { ...who, versions: before, problems: loaded.problems.slice(0, MAX_AUDITED_PROBLEMS).map((p) => ({ file: p.file, path: p.path, message: p.message })), problemCount: loaded.problems.length },
      });
      return result;
    }
    const after = Object.fromEntries([...loaded.templates.values()].map((t) => [t.name, t.version]));
    const diff = diffVersions(before, after);
    const same = diff.added.length + diff.removed.length + diff.changed.length === 0;
    if (same && by.trigger !== 'admin') {
      deps.log.debug({ ...who, dir: deps.dir }, 'templates reloaded: no change');
      return { ok: true, trigger: by.trigger, before, after: before, ...diff, problems: [] };
    }
    try {
      await deps.store.templateVersions.record(versionRecords(loaded.templates, loaded.definitions), {
        ...base, decision: 'updated', detail: { ...who, before, after, ...diff },
      });
    } catch (e) {
      // Fail closed: a version a session could start under must be in the store first.
      const problem: TemplateProblem = { file: deps.dir, path: '', message: `the reload could not be recorded (${(e as Error).message})`, hint: 'the templates in force stay; check the store, then reload again' };
      deps.log.error({ ...who, err: (e as Error).message }, 'template reload refused: the store could not record it; the templates in force stay');
      return unchanged(by.trigger, before, [problem]);
    }
    const at = this.now();
    for (const r of diff.removed) this.removed.set(r.name, at);
    for (const a of diff.added) this.removed.delete(a.name);
    // Versions sessions may still run under stay at hand (ofSession would find them in the store anyway).
    for (const t of this.current.values()) {
      if (after[t.name] !== t.version) this.older.set(`${t.name}@${t.version}`, t);
    }
    this.current = loaded.templates;
    deps.log.info({ ...who, before, after, ...diff }, 'templates reloaded');
    return { ok: true, trigger: by.trigger, before, after, ...diff, problems: [] };
  }

  private async audit(e: AuditEvent): Promise<void> {
    try {
      await this.deps!.store.auditLog.append(e);
    } catch (err) {
      this.deps!.log.error({ err: (err as Error).message, event: e.event }, 'audit write failed for a template reload');
    }
  }
}

function versionRecords(templates: Map<string, TaskTemplate>, definitions: Map<string, RawTemplate>) {
  return [...templates.values()].map((t) => ({ name: t.name, version: t.version, definition: definitions.get(t.name), file: t.file }));
}

function unchanged(trigger: ReloadTrigger, before: Record<string, string>, problems: TemplateProblem[]): ReloadResult {
  return { ok: false, trigger, before, after: before, added: [], removed: [], changed: [], problems };
}

export function diffVersions(before: Record<string, string>, after: Record<string, string>): Pick<ReloadResult, 'added' | 'removed' | 'changed'> {
  const names = (o: Record<string, string>) => Object.keys(o).sort();
  return {
    added: names(after).filter((n) => !(n in before)).map((name) => ({ name, version: after[name]! })),
    removed: names(before).filter((n) => !(n in after)).map((name) => ({ name, version: before[name]! })),
    changed: names(after).filter((n) => n in before && before[n] !== after[n]).map((name) => ({ name, from: before[name]!, to: after[name]! })),
  };
}
