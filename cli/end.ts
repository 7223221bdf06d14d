import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { BrokerError } from '../broker/errors.js';
import { action, info, printJson } from './output.js';

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
      const r = await callDaemon<{ ended: { id: string; template: string }[] }>({ op: 'end', ...(template ? { template } : { all: true }) });
      if (opts.json) printJson(r);
      else if (r.ended.length === 0) info('No active task sessions.');
      else for (const s of r.ended) info(`Ended ${s.template} (${s.id})`);
    }));
}
