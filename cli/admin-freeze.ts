import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { reportEnded } from './admin-output.js';
import { freezeScope } from './admin-scope.js';
import { action, out, printJson } from './output.js';

export function register(admin: Command): void {
  admin
    .command('freeze')
    .description('the kill switch: refuse starts and re-issues of a template (or all), with your reason, until unfrozen')
    .option('--template <name>', 'freeze this template')
    .option('--all', 'freeze every template')
    .option('--revoke', 'also end every active session of what is frozen')
    .requiredOption('--reason <text>', 'why (audited with your identity, and shown to every developer refused)')
    .option('--json', 'print the freeze as JSON')
    .action(action(async (opts: { template?: string; all?: boolean; revoke?: boolean; reason: string; json?: boolean }) => {
      const r = await callDaemon({ op: 'admin-freeze', ...freezeScope(opts, 'freeze'), reason: opts.reason, revoke: opts.revoke === true });
      if (opts.json) {
        printJson(r);
        return;
      }
      out(`Frozen ${r.freeze.scope === '*' ? 'every template' : r.freeze.scope}: ${r.freeze.reason}`);
      if (opts.revoke) reportEnded(r);
    }));
}
