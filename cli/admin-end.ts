import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { BrokerError } from '../broker/errors.js';
import { reportEnded } from './admin-output.js';
import { action, printJson } from './output.js';

export function register(admin: Command): void {
  admin
    .command('end')
    .description('end task sessions (nothing more is issued under them), revoke their Vault tokens, and ask for STS revocation where configured')
    .argument('[session-ids...]', 'the sessions to end')
    .option('--developer <email>', 'every active session of this developer')
    .option('--template <name>', 'every active session of this template')
    .requiredOption('--reason <text>', 'why (audited with your identity, and shown to the developer)')
    .option('--json', 'print what was ended as JSON')
    .action(action(async (ids: string[], opts: { developer?: string; template?: string; reason: string; json?: boolean }) => {
      const given = [ids.length > 0, opts.developer !== undefined, opts.template !== undefined].filter(Boolean).length;
      if (given !== 1) {
        throw new BrokerError('invalid_request', 'say which sessions to end: session ids, --developer or --template (one of them)', {
          hint: 'e.g. broker admin end --developer alice@example.com --reason "left the project"',
        });
      }
      const r = await callDaemon({
        op: 'admin-end', reason: opts.reason,
        ...(ids.length ? { sessions: ids } : opts.developer !== undefined ? { developer: opts.developer } : { template: opts.template }),
      });
      if (opts.json) printJson(r);
      else reportEnded(r);
    }));
}
