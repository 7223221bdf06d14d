import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import type { StartRequest } from '../broker/daemon/protocol.js';
import { checkBreakGlass, PENDING_EXIT, startConfirmed, startWords } from './confirmation.js';
import { action, collectParam, info, out, printJson } from './output.js';
import { timeLeft } from './time-left.js';

interface Options {
  param: Record<string, string>;
  ttl?: string;
  reason: string;
  agent: string;
  json?: boolean;
  wait: boolean;
  confirmHere?: boolean;
  breakGlass?: boolean;
  ensure?: boolean;
}

export function register(program: Command): void {
  program
    .command('task')
    .description('start a task session from a template (run before an agent run); its credentials stay in the daemon\'s memory. '
      + 'A template that needs a human confirmation makes a start request: its page is opened and the command waits until it is confirmed '
      + '(exit 13 when it ends with the request pending)')
    .argument('<template>', 'task template name, e.g. deploy-lambda')
    .option('-p, --param <name=value>', 'template parameter (repeatable)', collectParam, {})
    .option('--ttl <duration>', 'how long the task session may last, e.g. 30m, 2h (capped by the template)')
    .option('--reason <text>', 'why: recorded in the audit log and shown to whoever confirms', '')
    // Inside `broker exec`, the agent's name (BROKER_AGENT) is the default: its own starts are attributed to it.
    .option('--agent <name>', 'the agent that will use the credentials (becomes the broker:agent session tag)', process.env.BROKER_AGENT || 'unspecified')
    .option('--no-wait', 'when a confirmation is needed: print the request id (--json: the request) and exit 13 at once')
    .option('--confirm-here', 'when a confirmation is needed: confirm from this terminal (a login at the IdP with a code) instead of the page')
    .option('--break-glass', 'a template that allows it: start without approvers (needs --reason; you still confirm; everybody is notified)')
    .option('--ensure', 'reuse the template\'s active session (its parameters must match, when given) and start one only if none is (Claude Code\'s awsAuthRefresh)')
    .option('--json', 'print the session as JSON (never the credentials)')
    .action(action(async (template: string, opts: Options) => {
      checkBreakGlass(opts.breakGlass, opts.reason);
      const request: StartRequest = {
        template, params: opts.param, reason: opts.reason, agent: opts.agent, ...(opts.ttl ? { ttl: opts.ttl } : {}), ...(opts.breakGlass ? { breakGlass: true } : {}),
      };
      const r = await startConfirmed(() => (opts.ensure
        ? callDaemon({ op: 'ensure', request, paramsGiven: Object.keys(opts.param).length > 0 })
        : callDaemon({ op: 'start', request })), request, {
        noWait: !opts.wait, confirmHere: opts.confirmHere, json: opts.json, pendingExit: PENDING_EXIT,
        resume: ['broker', 'task', template, ...(opts.ensure ? ['--ensure'] : []), ...startWords(request)].join(' '),
      });
      // The credentials are not printed: agents get them through credential_process.
      if (opts.json) {
        printJson({
          session: r.session,
          ...(r.accessKeyId ? { accessKeyId: r.accessKeyId, credentialsExpire: r.credentialsExpire, profile: `broker-${template}` } : {}),
          ...(r.vaultAccessor ? { vaultAccessor: r.vaultAccessor, vaultTokenExpires: r.vaultTokenExpires } : {}),
        });
        return;
      }
      // The same facts as --json, readable, on stdout; what to do next is a hint (stderr).
      out(`Task session ${r.session.id} ${r.reused ? 'reused' : 'started'}: ${template}${r.accessKeyId ? ` as ${r.session.roleSessionName}` : ''}`);
      out(`  ends in ${timeLeft(r.session.expiresAt)} (${r.session.expiresAt}); the daemon refreshes what it grants until then`);
      if (r.accessKeyId) out(`  AWS: AWS_PROFILE=broker-${template} (AccessKeyId ${r.accessKeyId}, expires ${r.credentialsExpire})`);
      // The token itself is never printed here; only its accessor.
      if (r.vaultAccessor) out(`  Vault: token accessor ${r.vaultAccessor} (expires ${r.vaultTokenExpires}); the token: broker vault-token --task ${template}`);
      info(`run the agent under it: broker exec ${template} -- <agent>`);
    }));
}
