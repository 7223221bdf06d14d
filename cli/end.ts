import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { BrokerError } from '../broker/errors.js';
import { action, info, out, printJson } from './output.js';

export function register(program: Command): void {
  program
    .command('end')
    .description('end task sessions: the daemon drops their credentials and the service issues none under them afterwards')
    .argument('[template]', 'end the active session of this template')
    .option('--all', 'end all your active task sessions')
    .option('--json', 'print the ended sessions as JSON')
    .action(action(async (template: string | undefined, opts: { all?: boolean; json?: boolean }) => {
      if (!template && !opts.all) throw new BrokerError('invalid_request', 'say which session to end', { hint: 'broker end <template>  or  broker end --all' });
      if (template && opts.all) throw new BrokerError('invalid_request', 'give a template or --all, not both');
      const r = await callDaemon({ op: 'end', ...(template ? { template } : { all: true }) });
      if (opts.json) printJson(r);
      else if (r.ended.length === 0) out('No active task sessions.');
      for (const s of opts.json ? [] : r.ended) {
        out(`Ended ${s.template} (${s.id})`);
        // The session is over either way; a token Vault could not revoke now is retried by the
        // service, and it expires with the session.
        const p = s.vaultTokensPending;
        if (p.length) info(`  ${p.length} Vault token(s) not revoked yet (${p[0]!.error ?? 'Vault did not answer'}); the service retries, and they expire at the session's end`);
      }
    }));
}
