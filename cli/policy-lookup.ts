/**
 * What the admin commands that work on one template (`policy explain`, `policy test`) share: finding
 * it in a directory, with its problems if it is broken, and saying the service's errors in CLI terms.
 */
import { basename } from 'node:path';
import { BrokerError, isBrokerError } from '../broker/errors.js';
import { loadTemplates } from '../broker/templates/load.js';
import type { TaskTemplate } from '../broker/templates/schema.js';

export function findTemplate(dir: string, name: string): TaskTemplate {
  const { templates, problems } = loadTemplates(dir);
  const t = templates.get(name);
  if (t) return t;
  const own = problems.filter((p) => basename(p.file).replace(/\.ya?ml$/, '') === name);
  if (own.length) {
    throw new BrokerError('invalid_template', `task template "${name}" has ${own.length} problem(s)`, {
      details: own.map((p) => ({ path: `${p.file}${p.path ? `:${p.path}` : ''}`, message: p.message, ...(p.hint ? { hint: p.hint } : {}) })),
      hint: `fix them first; see: broker policy validate ${dir}`,
    });
  }
  throw new BrokerError('not_found', `no task template "${name}" in ${dir}`, {
    hint: templates.size ? `valid templates there: ${[...templates.keys()].join(', ')}` : `run: broker policy validate ${dir}`,
  });
}

/** The API's JSON pointers, said the way the CLI takes them. */
export function asCliError(e: unknown): unknown {
  if (!isBrokerError(e) || !e.details) return e;
  const details = e.details.map((d) => ({
    ...d,
    path: d.path?.replace(/^\/params\/(.*)$/, (_, n: string) => `--param ${n.replace(/~1/g, '/').replace(/~0/g, '~')}`).replace(/^\/agent$/, '--agent'),
  }));
  return new BrokerError(e.code, e.message, { details, ...(e.hint ? { hint: e.hint } : {}) });
}
