import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { BrokerError } from '../broker/errors.js';
import { sessionLine } from './admin-output.js';
import { action, out, printJson } from './output.js';

export function register(admin: Command): void {
  admin
    .command('sessions')
    .description('every developer\'s task sessions: agent, parameters, reason, who confirmed, time left, AccessKeyIds, Vault accessors')
    .option('--developer <email>', 'only this developer\'s')
    .option('--template <name>', 'only this template\'s')
    .option('--agent <name>', 'only those of this agent')
    .option('--active', 'only active ones')
    .option('--since <duration>', 'those started within this long (e.g. 24h, 7d), and any still active')
    .option('--json', 'print the sessions as JSON')
    .action(action(async (opts: { developer?: string; template?: string; agent?: string; active?: boolean; since?: string; json?: boolean }) => {
      if (opts.active && opts.since !== undefined) throw new BrokerError('invalid_request', 'give --active or --since, not both');
      const r = await callDaemon({
        op: 'admin-sessions',
        filter: { developer: opts.developer, template: opts.template, agent: opts.agent, active: opts.active === true, since: opts.since },
      });
      if (opts.json) {
        printJson(r);
        return;
      }
      if (r.sessions.length === 0) out('No task sessions matched.');
      for (const s of r.sessions) out(sessionLine(s));
    }));
}
