import type { Command } from 'commander';
import { loadTemplates } from '../broker/templates/load.js';
import { EXIT_NO } from '../broker/errors.js';
import { action, out, printJson } from './output.js';

export function register(policy: Command): void {
  policy
    .command('validate')
    .description('check every task template in a directory (YAML, fields, AWS limits, IAM action names); exit 1 on any problem')
    .argument('[dir]', 'directory of task templates', 'policies')
    .option('--json', 'print {ok, templates, problems} as JSON on stdout')
    .action(action((dir: string, opts: { json?: boolean }) => {
      const { templates, problems } = loadTemplates(dir);
      const names = [...templates.keys()];
      if (opts.json) {
        printJson({ ok: problems.length === 0, templates: names, problems });
      } else {
        for (const p of problems) out(`${p.file}:${p.path ? `${p.path}:` : ''} ${p.message}${p.hint ? ` (${p.hint})` : ''}`);
        const files = new Set(problems.map((p) => p.file)).size;
        out(problems.length
          ? `${problems.length} problem(s) in ${files} file(s); ${names.length} template(s) valid${names.length ? `: ${names.join(', ')}` : ''}`
          : `${names.length} template(s) valid: ${names.join(', ')}`);
      }
      // Problems found are the answer, not a failure of the command: exit 1 (README "Exit codes").
      if (problems.length) process.exitCode = EXIT_NO;
    }));
}
