import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { reportEnded } from './admin-output.js';
import { action, out, printJson } from './output.js';

export function register(admin: Command): void {
  admin
    .command('offboard')
    .description('end every session of a developer, revoke every login they hold, cancel their waiting start requests')
    .argument('<developer>', 'the developer as the service knows them (the email by default)')
    .requiredOption('--reason <text>', 'why (audited with your identity)')
    .option('--json', 'print what was done as JSON')
    .action(action(async (developer: string, opts: { reason: string; json?: boolean }) => {
      const r = await callDaemon({ op: 'admin-offboard', developer, reason: opts.reason });
      if (opts.json) {
        printJson(r);
        return;
      }
      out(`Offboarded ${r.developer}: ${r.loginsRevoked} login(s) revoked, ${r.ended.length} session(s) ended, ${r.requestsCancelled.length} start request(s) cancelled`);
      reportEnded(r);
    }));
}
