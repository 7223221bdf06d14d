/**
 * Can a parameter's value widen the grant it is rendered into? Every parameter pattern is tried at
 * load with hostile values, through the very check a task request goes through (render.ts
 * paramValueProblem: length, then the Policy charset, then the pattern), so what the probe accepts
 * is exactly what a developer could send.
 *
 * The values, and why each is dangerous inside an ARN or a condition value:
 * - wildcard: `*`, `?`, `a*`. IAM wildcards in Resource and in StringLike/ArnLike conditions (IAM
 *   User Guide, "IAM JSON policy elements: Resource"): `prefix=*` names every prefix.
 * - variable: `${aws:x}`, `$`, `{`, `}`. IAM expands policy variables such as `${aws:username}` in
 *   Resource and Condition values (IAM User Guide, "IAM policy elements: Variables and tags"), so a
 *   value holding `${` is not inert: `${*}` even stands for a literal `*` to match.
 * - empty: `''` turns `a/${param.x}/b` into `a//b` and `${param.x}*` into `*`.
 * - path: `..` (a parent segment, resolved by the tools that build keys and paths from it) and a
 *   lone `/` (`${param.x}/*` becomes `//*`), for path-like values (S3 prefixes, log group names).
 * - length: a value of maxLength+1 chars, which the length check must refuse before the pattern.
 *
 * `allowWildcards: true` lets a pattern accept the wildcard and variable values, when developers
 * are meant to widen the grant; empty, path and over-long values are refused whatever it says:
 * they are never a name, and a pattern can always say `+` instead of `*`.
 *
 * Fixed strings alone miss patterns such as `build-.*`, which accepts `build-*` but none of the
 * above. So, besides them, the pattern's language is intersected with "contains `*` or `?`" and
 * "contains `$`, `{` or `}`" (and "has a `..` segment") with refa, a finite-automata library for JS
 * regular expressions, and the shortest value in the intersection is probed too. Patterns refa
 * cannot turn into an automaton (anchors or word boundaries inside, backreferences it cannot
 * resolve, or too large) get the fixed probes only.
 */
import { createRequire } from 'node:module';
import { paramValueProblem } from './render.js';
import type { TemplateParameter } from './schema.js';

export type ProbeKind = 'wildcard' | 'variable' | 'empty' | 'path' | 'length';

/** The kinds `allowWildcards: true` lets through. */
const OPT_IN: ReadonlySet<ProbeKind> = new Set(['wildcard', 'variable']);

const FIXED: readonly { kind: ProbeKind; value: string }[] = [
  { kind: 'wildcard', value: '*' },
  { kind: 'wildcard', value: '?' },
  { kind: 'wildcard', value: 'a*' },
  { kind: 'variable', value: '${aws:x}' },
  { kind: 'variable', value: '$' },
  { kind: 'variable', value: '{' },
  { kind: 'variable', value: '}' },
  { kind: 'empty', value: '' },
  { kind: 'path', value: '..' },
  { kind: 'path', value: '/' },
];

/** What the value is, for the message. */
export function probeRisk(a: AcceptedProbe): string {
  switch (a.kind) {
    case 'wildcard': return 'an IAM wildcard';
    case 'variable': return 'IAM policy-variable syntax';
    case 'empty': return 'an empty value';
    case 'path': return a.value.includes('..') ? 'a parent-directory segment' : 'a lone /';
    case 'length': return `${a.value.length} chars, over maxLength`;
  }
}

/** The Policy charset (STS AssumeRole), as a class for the languages below. */
const CHARSET = '[\\t\\n\\r\\x20-\\xff]';
const DANGEROUS_LANGUAGES: readonly { kind: ProbeKind; source: string }[] = [
  { kind: 'wildcard', source: `${CHARSET}*[*?]${CHARSET}*` },
  { kind: 'variable', source: `${CHARSET}*[\${}]${CHARSET}*` },
  { kind: 'path', source: `(?:${CHARSET}*/)?\\.\\.(?:/${CHARSET}*)?` },
];

export interface AcceptedProbe { kind: ProbeKind; value: string }

/**
 * The hostile values this parameter's pattern lets through (after allowWildcards), in probe order;
 * empty if none. Each was accepted by paramValueProblem, the check task requests go through.
 */
export function probeParameter(p: TemplateParameter): AcceptedProbe[] {
  const probes = [...FIXED, ...shortestDangerous(p.pattern), { kind: 'length' as const, value: 'x'.repeat(p.maxLength + 1) }];
  const accepted: AcceptedProbe[] = [];
  const seen = new Set<string>();
  for (const probe of probes) {
    if (seen.has(probe.value)) continue;
    seen.add(probe.value);
    if (p.allowWildcards && OPT_IN.has(probe.kind)) continue;
    if (paramValueProblem(p, probe.value) === undefined) accepted.push(probe);
  }
  return accepted;
}

type Refa = typeof import('refa');
let refa: Refa | undefined;

/**
 * For each dangerous language, the shortest value the pattern accepts in it (refa's word order is
 * by length), if refa can build the automaton; otherwise nothing (the fixed probes still run).
 * refa is loaded on first use: every CLI command imports the template code, few validate templates.
 */
function shortestDangerous(pattern: string): { kind: ProbeKind; value: string }[] {
  try {
    refa ??= createRequire(import.meta.url)('refa') as Refa;
    const language = automaton(refa, pattern);
    const out: { kind: ProbeKind; value: string }[] = [];
    for (const { kind, source } of DANGEROUS_LANGUAGES) {
      const both = refa.NFA.fromIntersection(language, automaton(refa, source));
      const first = both.words()[Symbol.iterator]().next();
      if (!first.done) out.push({ kind, value: String.fromCodePoint(...first.value) });
    }
    return out;
  } catch {
    // Assertions refa cannot remove, unresolvable backreferences, or an automaton past its node
    // limit (TooManyNodesError): not analysable, and not an error of the template.
    return [];
  }
}

function automaton(r: Refa, source: string) {
  // Unanchored: an automaton's language is what it matches whole, i.e. `^(?:source)$`.
  const { expression, maxCharacter } = r.JS.Parser.fromLiteral({ source: `(?:${source})`, flags: '' }).parse();
  const simplified = r.transform(r.Transformers.simplify({ ignoreOrder: true, ignoreAmbiguity: true }), expression);
  return r.NFA.fromRegex(simplified, { maxCharacter }, { assertions: 'throw', unknowns: 'throw' });
}
