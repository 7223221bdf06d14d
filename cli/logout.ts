import type { Command } from 'commander';
import { keychainAccount } from '../broker/client/api.js';
import { requireCliConfig } from '../broker/client/cli-config.js';
import { keychainDelete } from '../broker/keychain.js';
import { action, info } from './output.js';

export function register(program: Command): void {
  program
    .command('logout')
    .description('forget the broker login (removes the refresh token from the OS keychain)')
    .action(action(async () => {
      const { serverUrl } = requireCliConfig();
      const removed = await keychainDelete(keychainAccount(serverUrl));
      info(removed ? `Logged out of ${serverUrl}` : `Not logged in to ${serverUrl}`);
    }));
}
