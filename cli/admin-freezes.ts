import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { action, out, printJson } from './output.js';

export function register(admin: Command): void {
  admin
    .command('freezes')
    .description('the freezes in force: what, by whom, why, since when')
    .option('--json', 'print them as JSON')
    .action(action(async (opts: { json?: boolean }) => {
      const r = await callDaemon({ op: 'admin-freezes' });
      if (opts.json) {
        printJson(r);
        return;
      }
      if (r.freezes.length === 0) out('Nothing is frozen.');
      for (const f of r.freezes) out(`${f.scope === '*' ? 'every template' : f.scope}  by ${f.by}  since ${f.at}  "${f.reason}"`);
    }));
}
