import type { Command } from 'commander';
import { activeSessions, authenticatedApi, type EndedSessionResponse } from '../broker/client/api.js';
import { BrokerError } from '../broker/errors.js';
import { action, info, printJson } from './output.js';

export function register(program: Command): void {
  program
    .command('end')
    .description('end task sessions: no credentials are re-issued under them afterwards')
    .argument('[template]', 'end the active session of this template')
    .option('--all', 'end all your active task sessions')
    .option('--json', 'print the ended sessions as JSON')
    .action(action(async (template: string | undefined, opts: { all?: boolean; json?: boolean }) => {
      if (!template && !opts.all) throw new BrokerError('invalid_request', 'say which session to end', { hint: 'broker end <template>  or  broker end --all' });
      if (template && opts.all) throw new BrokerError('invalid_request', 'give a template or --all, not both');
      const api = await authenticatedApi();
      const targets = (await activeSessions(api)).filter((s) => opts.all || s.template === template);
      if (template && targets.length === 0) {
        throw new BrokerError('not_found', `no active "${template}" task session`, { hint: 'see active sessions with: broker status' });
      }
      for (const s of targets) {
        const r = await api.request<EndedSessionResponse>('DELETE', `/v1/sessions/${encodeURIComponent(s.id)}`);
        if (opts.json) continue;
        info(`Ended ${s.template} (${s.id})`);
        // The session is over either way; a Vault token Vault could not revoke now is retried by the
        // service and expires with the session.
        const pending = (r.vaultTokens ?? []).filter((t) => !t.revoked);
        if (pending.length) info(`  ${pending.length} Vault token(s) not revoked yet (${pending[0]!.error ?? 'Vault did not answer'}); the service retries, and they expire at the session's end`);
      }
      if (opts.json) printJson({ ended: targets.map((s) => ({ id: s.id, template: s.template })) });
      else if (targets.length === 0) info('No active task sessions.');
    }));
}
