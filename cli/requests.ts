import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import type { StartRequestView } from '../broker/wire/service-api.js';
import { action, out, printJson } from './output.js';

/** One request per line: id, status, template and parameters, who asks (as approver), what it waits for. */
export function requestLine(r: StartRequestView, mine: boolean): string {
  const params = Object.entries(r.params).map(([k, v]) => `${k}=${v}`).join(' ');
  return [
    r.id, r.status.padEnd(9), `${r.template}${params ? ` ${params}` : ''}`, ...(mine ? [] : [`by ${r.requester}`]), `agent ${r.agent}`,
    ...(r.reason ? [`"${r.reason}"`] : []), ...(r.breakGlass ? ['BREAK-GLASS'] : []),
    ...(r.waitingFor.length ? [`waits for: ${r.waitingFor.join('; ')}`] : []),
  ].join('  ');
}

export function register(program: Command): void {
  const requests = program
    .command('requests')
    .description('start requests: those waiting for you as an approver (broker approve / deny them), or with --mine your own')
    .option('--mine', 'your own recent start requests instead')
    .option('--json', 'print the requests as JSON')
    .action(action(async (opts: { mine?: boolean; json?: boolean }) => {
      const list = await callDaemon({ op: 'requests', for: opts.mine ? 'me' : 'approver' });
      if (opts.json) {
        printJson({ requests: list });
        return;
      }
      if (list.length === 0) out(opts.mine ? 'No start requests of yours.' : 'No start requests wait for you.');
      for (const r of list) out(requestLine(r, opts.mine === true));
    }));
  requests
    .command('cancel')
    .description('cancel a start request of yours (pending or confirmed): it can no longer be started')
    .argument('<id>', 'the request id (req_…)')
    .option('--json', 'print the request as JSON')
    .action(action(async (id: string, opts: { json?: boolean }) => {
      const r = await callDaemon({ op: 'cancel-request', id });
      if (opts.json) printJson({ request: r });
      else out(`Cancelled start request ${r.id} (${r.template})`);
    }));
}
