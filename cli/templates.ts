import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { formatDuration } from '../broker/duration.js';
import type { TemplateSummary } from '../broker/wire/service-api.js';
import { action, printJson } from './output.js';

export function register(program: Command): void {
  program
    .command('templates')
    .description('list the task templates you may start: what each grants, its parameters and their patterns, how long a session may last')
    .option('--json', 'print them as JSON (the service\'s GET /v1/templates answer)')
    .action(action(async (opts: { json?: boolean }) => {
      // Through the daemon, which holds the login (the same request `broker configure aws` makes).
      const templates = await callDaemon({ op: 'templates' });
      if (opts.json) {
        printJson({ templates });
        return;
      }
      if (templates.length === 0) {
        process.stdout.write('No task templates you may start. Ask an admin to add your IdP group or email to one (allowed.groups / allowed.emails).\n');
        return;
      }
      process.stdout.write(templates.map(describe).join('\n'));
    }));
}

function describe(t: TemplateSummary): string {
  // Services older than Vault support send no `grants`: they grant AWS credentials only.
  const grants = (t.grants ?? ['aws']).map((g) => (g === 'aws' ? `aws${t.region ? ` (${t.region})` : ''}` : g)).join(', ');
  const params = Object.entries(t.parameters);
  const lines = [
    `${t.name}: ${t.description}`,
    `  grants:      ${grants}`,
    `  max session: ${formatDuration(t.maxSessionSeconds)}${(t.grants ?? ['aws']).includes('aws') ? `; credentials live up to ${formatDuration(t.credentialLifetimeSeconds)} and are refreshed` : ''}`,
    params.length ? '  parameters:' : '  parameters:  none',
    ...params.map(([name, p]) => `    --param ${name}=<value>  ${p.description ? `${p.description}; ` : ''}pattern ${p.pattern}, at most ${p.maxLength} chars`),
    `  start:       broker task ${t.name}${params.map(([name]) => ` --param ${name}=…`).join('')}`,
  ];
  return `${lines.join('\n')}\n`;
}
