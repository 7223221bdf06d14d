/**
 * `broker approve` and `broker deny`: a decision on a start request from a terminal. It rests on a
 * fresh login at the IdP (the service's device authorization, with the request's max_age), not on
 * the daemon's login: an approver's own agent runs with the approver's daemon login, and must not
 * be able to approve anything by itself.
 */
import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { BrokerError } from '../broker/errors.js';
import { deviceDecision, describeRequest } from './confirmation.js';
import { action, out, printJson } from './output.js';

async function decide(id: string, kind: 'approve' | 'deny', reason: string, json: boolean): Promise<void> {
  const r = await callDaemon({ op: 'request', id });
  if (r.status !== 'pending') throw new BrokerError('conflict', `start request ${r.id} is ${r.status}: it takes no decisions`);
  // The requester's own "approve" is their confirmation (the step every request needs); whoever
  // logs in at the IdP is who decides, and the service checks that person's right to.
  const me = await callDaemon({ op: 'whoami' });
  const decision = kind === 'deny' ? 'deny' : r.requester === me.id ? 'confirm' : 'approve';
  describeRequest(r, `broker: ${decision === 'deny' ? 'denying' : decision === 'confirm' ? 'confirming' : 'approving'} start request ${r.id}`);
  const after = await deviceDecision(r, decision, reason);
  if (after === 'interrupted') return;
  if (json) {
    printJson({ request: after });
    return;
  }
  const by = after.decisions.at(-1)?.by;
  const did = decision === 'deny' ? 'Denied' : decision === 'confirm' ? 'Confirmed' : 'Approved';
  out(`${did} start request ${after.id} (${after.template})${by ? ` as ${by}` : ''}; it is now ${after.status}`
    + `${after.waitingFor.length ? ` and waits for: ${after.waitingFor.join('; ')}` : ''}`);
}

export function register(program: Command): void {
  program
    .command('approve')
    .description('approve a start request (or confirm your own): needs a fresh login at the IdP, with a code shown here')
    .argument('<id>', 'the request id (req_…), see: broker requests')
    .option('--reason <text>', 'why: recorded with the decision', '')
    .option('--json', 'print the request as it then stands, as JSON')
    .action(action(async (id: string, opts: { reason: string; json?: boolean }) => decide(id, 'approve', opts.reason, opts.json === true)));
  program
    .command('deny')
    .description('deny a start request (an approver, or its requester withdrawing it): needs a fresh login at the IdP')
    .argument('<id>', 'the request id (req_…)')
    .requiredOption('--reason <text>', 'why: shown to the requester and recorded')
    .option('--json', 'print the request as it then stands, as JSON')
    .action(action(async (id: string, opts: { reason: string; json?: boolean }) => decide(id, 'deny', opts.reason, opts.json === true)));
}
