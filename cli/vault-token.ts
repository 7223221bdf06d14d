import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { BrokerError } from '../broker/errors.js';
import { action, printJson } from './output.js';

/**
 * `broker vault-token`: the task's Vault token on stdout, for `VAULT_TOKEN=$(broker vault-token …)`
 * and as a Vault/OpenBao token helper (`get`, `store`, `erase` as the last argument; the helper
 * protocol of the `vault`/`bao` CLIs). The daemon holds and renews the token; nothing is written.
 */
export function register(program: Command): void {
  program
    .command('vault-token')
    .description('print the Vault token of a task session on stdout (also a Vault token helper: get|store|erase)')
    .argument('[operation]', 'token-helper operation: get (default), store or erase')
    .option('--task <template>', 'task template (default: $BROKER_TASK, else the one active session that grants a Vault token)')
    .option('--json', 'print {template, token, accessor, address, namespace, expiresAt} as JSON')
    .action(action(async (operation: string | undefined, opts: { task?: string; json?: boolean }) => {
      const op = operation ?? 'get';
      if (op === 'store') {
        // `vault login` hands its token to the helper; the broker issues its own, per task.
        process.stdin.resume();
        throw new BrokerError('invalid_request', 'the broker does not store Vault tokens: it issues one per task session', {
          hint: 'start a task with a vault section (broker task <template>) instead of vault login',
        });
      }
      if (op === 'erase') return; // Nothing is stored; the task's token ends with the task (broker end).
      if (op !== 'get') throw new BrokerError('invalid_request', `unknown operation "${op}"`, { hint: 'get, store or erase' });
      const task = opts.task ?? (process.env.BROKER_TASK || undefined);
      const r = await callDaemon({ op: 'vault-token', ...(task ? { task } : {}) });
      if (opts.json) printJson(r);
      // No newline for the token helper protocol (Vault reads stdout as the token); harmless in $(…).
      else process.stdout.write(r.token);
    }));
}
