import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { EXIT_CODES } from '../broker/errors.js';
import { action, out, printJson } from './output.js';

export function register(admin: Command): void {
  admin
    .command('reload')
    .description('read the service\'s policiesDir again now; a set with any invalid template is not taken (exit 3)')
    .requiredOption('--reason <text>', 'why (audited with your identity)')
    .option('--json', 'print {ok, before, after, added, removed, changed, problems} as JSON')
    .action(action(async (opts: { reason: string; json?: boolean }) => {
      const r = await callDaemon({ op: 'admin-reload', reason: opts.reason });
      if (opts.json) {
        printJson(r);
      } else if (!r.ok) {
        for (const p of r.problems) out(`${p.file}:${p.path ? `${p.path}:` : ''} ${p.message}${p.hint ? ` (${p.hint})` : ''}`);
        out(`Not reloaded: ${r.problems.length} problem(s); the templates in force stay (${Object.keys(r.after).length}).`);
      } else {
        for (const a of r.added) out(`added    ${a.name}  ${a.version}`);
        for (const c of r.changed) out(`changed  ${c.name}  ${c.from} -> ${c.to}`);
        for (const d of r.removed) out(`removed  ${d.name}  ${d.version}`);
        const n = r.added.length + r.changed.length + r.removed.length;
        out(n ? `Reloaded: ${Object.keys(r.after).length} template(s) in force; running sessions keep the version they started under.` : `Reloaded: no change (${Object.keys(r.after).length} template(s)).`);
      }
      // The templates on the service are wrong, not this command: the remedy of invalid_template (README "Exit codes").
      if (!r.ok) process.exitCode = EXIT_CODES.invalid_template;
    }));
}
