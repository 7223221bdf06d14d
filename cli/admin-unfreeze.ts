import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { freezeScope } from './admin-scope.js';
import { action, out, printJson } from './output.js';

export function register(admin: Command): void {
  admin
    .command('unfreeze')
    .description('lift a freeze: starts and re-issues of the template (or all) are allowed again')
    .option('--template <name>', 'unfreeze this template')
    .option('--all', 'lift the freeze of every template')
    .requiredOption('--reason <text>', 'why (audited with your identity)')
    .option('--json', 'print the freezes left as JSON')
    .action(action(async (opts: { template?: string; all?: boolean; reason: string; json?: boolean }) => {
      const r = await callDaemon({ op: 'admin-unfreeze', ...freezeScope(opts, 'unfreeze'), reason: opts.reason });
      if (opts.json) {
        printJson(r);
        return;
      }
      out(`Unfrozen ${r.unfrozen.scope === '*' ? 'every template' : r.unfrozen.scope}`);
      for (const f of r.freezes) out(`still frozen: ${f.scope === '*' ? 'every template' : f.scope} (by ${f.by}: ${f.reason})`);
    }));
}
