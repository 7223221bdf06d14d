import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { action, info, printJson } from './output.js';

export function register(program: Command): void {
  program
    .command('whoami')
    .description('show who the broker service thinks you are')
    .option('--json', 'print as JSON')
    .action(action(async (opts: { json?: boolean }) => {
      const me = await callDaemon({ op: 'whoami' });
      if (opts.json) printJson(me);
      else {
        process.stdout.write(`${me.id}${me.groups.length ? ` (groups: ${me.groups.join(', ')})` : ''} at ${me.server}\n`);
        if (me.loginStore) info(`login kept in the ${me.loginStore.label}`);
      }
    }));
}
