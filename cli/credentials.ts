import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { BrokerError } from '../broker/errors.js';
import { TEMPLATE_NAME_RE, TEMPLATE_NAME_RULE } from '../broker/limits/names.js';
import { action } from './output.js';

interface Options { task: string; format: string }

export function register(program: Command): void {
  const credentials = program.command('credentials').description('the task credentials the daemon holds, for tools that read them from a command');
  credentials
    .command('export')
    .description('print a task\'s current AWS credentials as JSON on stdout (a secret: for Claude Code\'s awsCredentialExport, never for a terminal or a log)')
    .requiredOption('--task <template>', 'task template whose session supplies the credentials')
    .option('--format <format>', 'claude: {"Credentials": {AccessKeyId, SecretAccessKey, SessionToken, Expiration}}, the shape of STS\'s own answer', 'claude')
    .action(action(async (opts: Options) => {
      if (!TEMPLATE_NAME_RE.test(opts.task)) throw new BrokerError('invalid_request', `--task "${opts.task.slice(0, 60)}" is not a template name (${TEMPLATE_NAME_RULE})`);
      if (opts.format !== 'claude') throw new BrokerError('invalid_request', `--format "${opts.format.slice(0, 40)}" is not one this command prints`, { hint: '--format claude; for AWS SDKs use credential_process (broker configure aws)' });
      const c = await callDaemon({ op: 'credentials', task: opts.task });
      // Expiration always: without it Claude Code takes the keys for long-term ones and hangs when
      // they expire (anthropics/claude-code#57823). One complete document or nothing on stdout.
      process.stdout.write(`${JSON.stringify({ Credentials: { AccessKeyId: c.AccessKeyId, SecretAccessKey: c.SecretAccessKey, SessionToken: c.SessionToken, Expiration: c.Expiration } })}\n`);
    }));
}
