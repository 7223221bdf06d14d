import type { Command } from 'commander';
import { authenticatedApi, type StartedSession } from '../broker/client/api.js';
import { action, collectParam, info, printJson } from './output.js';
import { timeLeft } from './time-left.js';

export function register(program: Command): void {
  program
    .command('task')
    .description('start a task session from a template (run before an agent run)')
    .argument('<template>', 'task template name, e.g. deploy-lambda')
    .option('-p, --param <name=value>', 'template parameter (repeatable)', collectParam, {})
    .option('--ttl <duration>', 'how long the task session may last, e.g. 30m, 2h (capped by the template)')
    .option('--reason <text>', 'why: recorded in the audit log', '')
    .option('--agent <name>', 'the agent that will use the credentials (becomes the broker:agent session tag)', 'unspecified')
    .option('--json', 'print the session as JSON (no credentials)')
    .action(action(async (template: string, opts: { param: Record<string, string>; ttl?: string; reason: string; agent: string; json?: boolean }) => {
      const api = await authenticatedApi();
      const r = await api.request<StartedSession>('POST', '/v1/sessions', {
        template, params: opts.param, reason: opts.reason, agent: opts.agent, ...(opts.ttl ? { ttl: opts.ttl } : {}),
      });
      // The credentials are not printed: agents get them through credential_process.
      if (opts.json) {
        printJson({
          session: r.session,
          ...(r.credentials ? { accessKeyId: r.credentials.AccessKeyId, credentialsExpire: r.credentials.Expiration, profile: `broker-${template}` } : {}),
          ...(r.vault ? { vaultAccessor: r.vault.accessor, vaultTokenExpires: r.vault.expiresAt } : {}),
        });
        return;
      }
      info(`Task session ${r.session.id} started: ${template} as ${r.session.roleSessionName}`);
      info(`  ends in ${timeLeft(r.session.expiresAt)} (${r.session.expiresAt})`);
      if (r.credentials) {
        info('  AWS credentials refresh through credential_process');
        info(`  use them with: AWS_PROFILE=broker-${template}   (set up profiles once with: broker configure aws)`);
      }
      // The token itself is never printed; only its accessor.
      if (r.vault) info(`  Vault token issued (accessor ${r.vault.accessor}, policies ${r.vault.policies.join(', ')})`);
    }));
}
