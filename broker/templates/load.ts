/**
 * Loads every task template of a directory, reporting every problem of every file (YAML syntax,
 * shape, AWS limits) rather than stopping at the first, so one `broker policy validate` run lists
 * all there is to fix. The service refuses to start on any problem (loadTemplatesOrThrow).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { BrokerError } from '../errors.js';
import { closest } from './iam-actions.js';
import { templateSchema, type RawTemplate, type TaskTemplate } from './schema.js';
import { fieldPath, validateTemplate, type TemplateProblem } from './validate.js';

export type { TemplateProblem } from './validate.js';

/** Far above any sane template; stops a stray large file from being parsed. */
const MAX_TEMPLATE_BYTES = 256 * 1024;

export interface LoadedTemplates {
  templates: Map<string, TaskTemplate>;
  /** Each template's parsed form (what its version hashes): the service keeps it per version in the store. */
  definitions: Map<string, RawTemplate>;
  problems: TemplateProblem[];
}

export function loadTemplates(dir: string): LoadedTemplates {
  const templates = new Map<string, TaskTemplate>();
  const definitions = new Map<string, RawTemplate>();
  const problems: TemplateProblem[] = [];
  let entries: string[];
  try {
    entries = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    problems.push({ file: dir, path: '', message: code === 'ENOENT' ? 'no such directory' : `cannot read the directory (${code ?? 'error'})`, hint: 'give the directory of task templates, e.g. --dir policies' });
    return { templates, definitions, problems };
  }
  if (entries.length === 0) {
    problems.push({ file: dir, path: '', message: 'holds no task templates (*.yaml)', hint: 'add one; docs/templates.md has an example' });
  }
  const fileOf = new Map<string, string>();
  for (const entry of entries) {
    const file = join(dir, entry);
    const result = loadFile(file);
    problems.push(...result.problems);
    if (!result.template) continue;
    const other = fileOf.get(result.template.name);
    if (other !== undefined) {
      problems.push({ file, path: 'name', message: `"${result.template.name}" is already defined in ${other}`, hint: 'template names must be unique; remove or rename one file' });
      continue;
    }
    fileOf.set(result.template.name, file);
    templates.set(result.template.name, result.template);
    definitions.set(result.template.name, result.raw!);
  }
  return { templates, definitions, problems };
}

/**
 * A template again from the parsed form kept in the store (a session's version, after a restart or
 * in another service process): checked exactly as at load, so it means what it meant then.
 */
export function templateFromDefinition(definition: unknown, file: string): { template?: TaskTemplate; problems: TemplateProblem[] } {
  const parsed = templateSchema.safeParse(definition);
  if (!parsed.success) return { problems: parsed.error.issues.map((i) => ({ file, path: fieldPath(i.path), message: i.message })) };
  return validateTemplate(parsed.data, file);
}

/** For the service: start only with a fully valid set of templates. */
export function loadTemplatesOrThrow(dir: string): Map<string, TaskTemplate> {
  return loadValidTemplates(dir).templates;
}

/** loadTemplatesOrThrow with the parsed forms (the service keeps them per version). */
export function loadValidTemplates(dir: string): Omit<LoadedTemplates, 'problems'> {
  const { templates, definitions, problems } = loadTemplates(dir);
  if (problems.length) {
    throw new BrokerError('invalid_template', `${problems.length} problem(s) in the task templates of ${dir}`, {
      details: problems.map((p) => ({ path: `${p.file}${p.path ? `:${p.path}` : ''}`, message: p.message, ...(p.hint ? { hint: p.hint } : {}) })),
      hint: `see them all with: broker policy validate ${dir}`,
    });
  }
  return { templates, definitions };
}

function loadFile(file: string): { template?: TaskTemplate; raw?: RawTemplate; problems: TemplateProblem[] } {
  const problem = (path: string, message: string, hint?: string): TemplateProblem => ({ file, path, message, ...(hint ? { hint } : {}) });
  let text: string;
  try {
    if (statSync(file).size > MAX_TEMPLATE_BYTES) return { problems: [problem('', `is larger than ${MAX_TEMPLATE_BYTES} bytes`, 'a task template is a few dozen lines')] };
    text = readFileSync(file, 'utf8');
  } catch (e) {
    return { problems: [problem('', `cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`)] };
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length) {
    return {
      problems: doc.errors.map((e) => {
        const at = e.linePos?.[0];
        const what = e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
        return problem('', `YAML syntax error${at ? ` at line ${at.line}, column ${at.col}` : ''}: ${what}`, 'fix the YAML (indentation, quotes, brackets); keys must be unique');
      }),
    };
  }
  const input: unknown = doc.toJS({ maxAliasCount: 50 });
  const protoPath = findProtoKey(input, []);
  if (protoPath) return { problems: [problem(fieldPath(protoPath), 'the key "__proto__" is not allowed', 'rename it')] };
  const parsed = templateSchema.safeParse(input);
  if (!parsed.success) return { problems: parsed.error.issues.flatMap((i) => issueProblems(i, input).map((p) => ({ file, ...p }))) };
  return { ...validateTemplate(parsed.data, file), raw: parsed.data };
}

/** Parsers and zod treat `__proto__` inconsistently (zod drops it silently); refuse it outright. */
function findProtoKey(v: unknown, path: PropertyKey[]): PropertyKey[] | undefined {
  if (v === null || typeof v !== 'object') return undefined;
  for (const [k, x] of Object.entries(v)) {
    const p = [...path, Array.isArray(v) ? Number(k) : k];
    if (k === '__proto__') return p;
    const found = findProtoKey(x, p);
    if (found) return found;
  }
  return undefined;
}

type Problem = Omit<TemplateProblem, 'file'>;

/** One zod issue as problems people can act on: unknown keys get a "did you mean", types a fix. */
function issueProblems(issue: z.core.$ZodIssue, input: unknown): Problem[] {
  const path = fieldPath(issue.path);
  const at = (extra: PropertyKey) => fieldPath([...issue.path, extra]);
  switch (issue.code) {
    case 'unrecognized_keys': {
      const allowed = keysAt(templateSchema, issue.path);
      return issue.keys.map((key) => {
        const near = closest(key, allowed);
        const hint = key === 'Principal' ? 'a session policy applies to the session itself: it has no Principal'
          : near ? `did you mean "${near}"?` : `allowed here: ${allowed.join(', ')}`;
        return { path: at(key), message: `unknown key "${key}"`, hint };
      });
    }
    case 'invalid_type': {
      const value = valueAt(input, issue.path);
      if (issue.path.length === 0) return [{ path, message: value == null ? 'the file is empty' : 'is not a YAML mapping of template fields', hint: 'docs/templates.md has an example' }];
      if (value === undefined) return [{ path, message: 'is required', hint: 'see docs/templates.md for the fields of a template' }];
      const got = value === null ? 'nothing (null)' : Array.isArray(value) ? 'a list' : `a ${typeof value}`;
      const quote = issue.expected === 'string' && (typeof value === 'number' || typeof value === 'boolean');
      const wanted = issue.expected === 'array' ? 'a list' : issue.expected === 'object' ? 'a mapping' : `a ${issue.expected}`;
      return [{ path, message: `expected ${wanted}, got ${got}`, ...(quote ? { hint: `quote it in YAML: "${String(value)}"` } : {}) }];
    }
    case 'invalid_key': {
      const key = String(issue.path.at(-1));
      const param = issue.path[0] === 'parameters';
      return [{ path, message: `"${key}" is not a valid ${param ? 'parameter name' : 'key'}`, ...(param ? { hint: 'a letter, then letters, digits or _ (at most 32 chars)' } : {}) }];
    }
    case 'invalid_union': {
      // Report the inner issues of the one alternative whose outer type fit (a list of statements
      // with a bad statement), not just "invalid input".
      const fitting = issue.errors.filter((errs) => !errs.some((e) => e.code === 'invalid_type' && e.path.length === 0));
      if (fitting.length !== 1) return [{ path, message: issue.message }];
      return fitting[0]!.flatMap((inner) => issueProblems({ ...inner, path: [...issue.path, ...inner.path] } as z.core.$ZodIssue, input));
    }
    default:
      return [{ path, message: issue.message }];
  }
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v = input;
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[seg];
  }
  return v;
}

/** The keys an object in the schema accepts at `path` (through optional, default, array, record, union). */
function keysAt(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  const unwrap = (s: z.ZodType): z.ZodType[] => {
    if (s instanceof z.ZodOptional || s instanceof z.ZodDefault) return unwrap(s.unwrap() as z.ZodType);
    if (s instanceof z.ZodPipe) return unwrap(s.in as z.ZodType);
    if (s instanceof z.ZodUnion) return (s.options as z.ZodType[]).flatMap(unwrap);
    return [s];
  };
  let nodes = unwrap(schema);
  for (const seg of path) {
    nodes = nodes.flatMap((n): z.ZodType[] => {
      if (n instanceof z.ZodObject && typeof seg === 'string' && seg in n.shape) return unwrap(n.shape[seg] as z.ZodType);
      if (n instanceof z.ZodArray && typeof seg === 'number') return unwrap(n.element as z.ZodType);
      if (n instanceof z.ZodRecord && typeof seg === 'string') return unwrap(n.valueType as z.ZodType);
      return [];
    });
  }
  return [...new Set(nodes.flatMap((n) => (n instanceof z.ZodObject ? Object.keys(n.shape) : [])))];
}
