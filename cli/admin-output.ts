import type { AdminEndResponse, AdminSessionView } from '../broker/wire/service-api.js';
import { info, out } from './output.js';
import { timeLeft } from './time-left.js';

/** One session per line for `broker admin sessions`: whose, what, where it stands, what was issued. */
export function sessionLine(s: AdminSessionView, now = Date.now()): string {
  const params = Object.entries(s.params).map(([k, v]) => `${k}=${v}`).join(' ');
  const state = s.state === 'active' ? `active ${timeLeft(s.expiresAt, now)} left` : s.endedBy ? `ended by ${s.endedBy}` : s.state;
  const confirmed = s.startRequest ? [...s.startRequest.confirmedBy.map((b) => `confirmed by ${b}`), ...s.startRequest.approvedBy.map((b) => `approved by ${b}`)] : [];
  return [
    s.id, s.developer, `${s.template}${params ? ` ${params}` : ''}`, ...(s.templateVersion ? [`version ${s.templateVersion}`] : []), `agent ${s.agent}`, state,
    ...(s.reason ? [`"${s.reason}"`] : []), ...confirmed,
    ...(s.credentials.length ? [`keys ${s.credentials.map((c) => c.accessKeyId).join(',')}`] : []),
    ...(s.vaultTokens.length ? [`vault ${s.vaultTokens.map((t) => t.accessor).join(',')}`] : []),
  ].join('  ');
}

/** What an end did, for people: the sessions ended, and what still works (STS credentials, unless revoked). */
export function reportEnded(r: AdminEndResponse): void {
  if (r.ended.length === 0 && r.alreadyEnded.length === 0) out('No active task sessions matched.');
  for (const e of r.ended) {
    out(`Ended ${e.session.template} ${e.session.id} of ${e.session.developer}`);
    const pending = e.vaultTokens.filter((t) => !t.revoked);
    if (pending.length) info(`  ${pending.length} Vault token(s) not revoked yet; the service retries, and they expire at the session's end`);
  }
  for (const id of r.alreadyEnded) out(`Already ended: ${id}`);
  if (r.stsRevocation.status === 'not_configured' || r.stsRevocation.status === 'failed') info(`warning: ${r.stsRevocation.message}`);
  else if (r.stsRevocation.status === 'requested') info(r.stsRevocation.message);
}
