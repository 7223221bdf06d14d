import type { Command } from 'commander';
import { requireCliConfig } from '../broker/client/cli-config.js';
import { deleteLogin } from '../broker/client/login-record.js';
import { notifyDaemon } from '../broker/daemon/notify.js';
import { action, out } from './output.js';

export function register(program: Command): void {
  program
    .command('logout')
    .description('forget the broker login: removes it from the OS keychain, and the daemon drops every credential it holds')
    .action(action(async () => {
      const { serverUrl } = requireCliConfig();
      const removed = await deleteLogin(serverUrl);
      await notifyDaemon();
      out(removed ? `Logged out of ${serverUrl}` : `Not logged in to ${serverUrl}`);
    }));
}
