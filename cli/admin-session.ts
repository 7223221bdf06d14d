import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { sessionLine } from './admin-output.js';
import { action, out, printJson } from './output.js';

export function register(admin: Command): void {
  admin
    .command('session')
    .description('one task session and its whole history from the audit log')
    .argument('<id>', 'the session id')
    .option('--json', 'print the session and its history as JSON')
    .action(action(async (id: string, opts: { json?: boolean }) => {
      const r = await callDaemon({ op: 'admin-session', id });
      if (opts.json) {
        printJson(r);
        return;
      }
      out(sessionLine(r.session));
      for (const h of r.history) {
        const who = typeof h.detail?.admin === 'string' ? ` by ${h.detail.admin}` : '';
        out(`  ${h.at}  ${h.event} ${h.decision}${who}${h.reason ? `  "${h.reason}"` : ''}${h.accessKeyId ? `  ${h.accessKeyId}` : ''}${h.vaultAccessor ? `  vault ${h.vaultAccessor}` : ''}`);
      }
    }));
}
