import type { Command } from 'commander';
import { authenticatedApi } from '../broker/client/api.js';
import { action, printJson } from './output.js';

export function register(program: Command): void {
  program
    .command('whoami')
    .description('show who the broker service thinks you are')
    .option('--json', 'print as JSON')
    .action(action(async (opts: { json?: boolean }) => {
      const api = await authenticatedApi();
      const me = await api.request<{ id: string; email: string; groups: string[] }>('GET', '/v1/whoami');
      if (opts.json) printJson({ ...me, server: api.baseUrl });
      else process.stdout.write(`${me.id}${me.groups.length ? ` (groups: ${me.groups.join(', ')})` : ''} at ${api.baseUrl}\n`);
    }));
}
