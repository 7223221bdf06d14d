import type { Command } from 'commander';
import { readCliConfig } from '../broker/client/cli-config.js';
import { checkedFederationUrl, consoleSigninUrl, CONSOLE_SESSION_MAX_S, CONSOLE_SESSION_MIN_S, partitionUrls } from '../broker/client/console-signin.js';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { formatDuration, parseDuration } from '../broker/duration.js';
import { BrokerError } from '../broker/errors.js';
import { TEMPLATE_NAME_RE, TEMPLATE_NAME_RULE } from '../broker/limits/names.js';
import { canOpenBrowser, openBrowser } from './open-browser.js';
import { action, info } from './output.js';

interface Options { print?: boolean; duration?: string }

/** Overrides the partition's federation endpoint (tests: a local endpoint; plain http only to loopback). */
export const FEDERATION_URL_ENV = 'BROKER_CONSOLE_FEDERATION_URL';

export function register(program: Command): void {
  program
    .command('console')
    .description('sign in to the AWS console as a task\'s session (its session policy and tags apply): a federation sign-in URL from the credentials the daemon holds, opened in the browser')
    .argument('<template>', 'the task template whose active session signs in')
    .option('--print', 'print the URL on stdout instead of opening it (it is a credential: whoever has it is signed in)')
    .option('--duration <d>', `console session length, ${formatDuration(CONSOLE_SESSION_MIN_S)} to ${formatDuration(CONSOLE_SESSION_MAX_S)} and within the task session (default: the federation endpoint's)`)
    .action(action(async (template: string, opts: Options) => {
      if (!TEMPLATE_NAME_RE.test(template)) throw new BrokerError('invalid_request', `"${template.slice(0, 60)}" is not a template name (${TEMPLATE_NAME_RULE})`);
      let duration: number | undefined;
      if (opts.duration !== undefined) {
        duration = parseDuration(opts.duration);
        if (duration === undefined || duration < CONSOLE_SESSION_MIN_S || duration > CONSOLE_SESSION_MAX_S) {
          throw new BrokerError('invalid_request', `--duration "${opts.duration.slice(0, 20)}" is not ${formatDuration(CONSOLE_SESSION_MIN_S)} to ${formatDuration(CONSOLE_SESSION_MAX_S)}`, { hint: 'e.g. --duration 1h' });
        }
      }
      // Before any credential is fetched: nowhere to show the URL is a mistake, not a reason to print it.
      if (!opts.print && !canOpenBrowser()) {
        throw new BrokerError('invalid_request', 'cannot open a browser here', { hint: '--print puts the URL on stdout; it signs in whoever opens it, so keep it out of logs and chats' });
      }
      const federationOverride = process.env[FEDERATION_URL_ENV];
      const federation = federationOverride ? checkedFederationUrl(federationOverride, FEDERATION_URL_ENV) : undefined;
      const session = (await callDaemon({ op: 'status' })).sessions.find((s) => s.template === template);
      if (!session) throw new BrokerError('not_found', `no active "${template}" task session`, { hint: `start one: broker task ${template}` });
      if (session.region === null) throw new BrokerError('invalid_request', `${template} grants no AWS credentials`);
      const left = Math.floor((Date.parse(session.expiresAt) - Date.now()) / 1000);
      if (duration !== undefined && duration > left) {
        throw new BrokerError('invalid_request', `--duration ${opts.duration} outlasts the task session (it ends in ${formatDuration(left)})`, { hint: 'ask for less, or start a longer session' });
      }
      const c = await callDaemon({ op: 'credentials', task: template });
      const urls = partitionUrls(session.region);
      const url = await consoleSigninUrl({
        credentials: c,
        federation: federation ?? urls.federation,
        destination: `${urls.console}console/home?region=${encodeURIComponent(session.region)}`,
        // Where the console sends the person when the session ends: the broker service.
        issuer: readCliConfig()?.serverUrl ?? 'agent-credential-broker',
        ...(duration !== undefined ? { sessionDurationSeconds: duration } : {}),
      });
      if (opts.print) {
        info('warning: this URL signs in to the AWS console as the task session; do not paste it into a log, ticket or chat');
        process.stdout.write(`${url}\n`);
        return;
      }
      if (!openBrowser(url)) throw new BrokerError('internal', 'the browser could not be started', { hint: 'run again with --print' });
      info(`opened the AWS console as ${template} (session ${session.id}) in your browser`);
    }));
}
