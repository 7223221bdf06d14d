import type { AdminAuditResponse, PrincipalChainView } from '../broker/wire/service-api.js';

type Record_ = AdminAuditResponse['records'][number];

/** One task session's principal chain for people: a heading line, then one fact per line. */
export function chainBlock(c: PrincipalChainView): string[] {
  const row = (label: string, value: string) => `  ${label.padEnd(13)} ${value}`;
  const lines = [`task session ${c.sessionId}`];
  lines.push(row('human', `${c.developer}${c.sourceIdentity ? ' (the AWS SourceIdentity of its credentials)' : ''}`));
  lines.push(row('agent', c.agent));
  for (const a of c.agentChanges) lines.push(row('', `then ${a.agent} from ${a.at}`));
  lines.push(row('template', `${c.template}${c.templateVersion ? ` version ${c.templateVersion}` : ''}`));
  const params = Object.entries(c.params).map(([k, v]) => `${k}=${v}`).join(' ');
  lines.push(row('parameters', params || '(none)'));
  lines.push(row('reason', c.reason ? `"${c.reason}"` : '(none given)'));
  lines.push(row('started', `${c.startedAt}${c.endsAt ? `, to end by ${c.endsAt}` : ''}`));
  if (c.confirmation) {
    const who = [...c.confirmation.confirmedBy.map((b) => `confirmed by ${b}`), ...c.confirmation.approvedBy.map((b) => `approved by ${b}`)];
    lines.push(row('confirmation', `${who.join(', ') || 'none recorded'}${c.confirmation.breakGlass ? ' (break glass)' : ''} (request ${c.confirmation.request})`));
  } else {
    lines.push(row('confirmation', 'none (the template needs none)'));
  }
  if (c.roleSessionName) lines.push(row('role session', c.roleSessionName));
  if (c.credentials.length === 0) lines.push(row('credentials', 'none issued'));
  for (const k of c.credentials) lines.push(row('credential', `${k.accessKeyId}  issued ${k.issuedAt}  expires ${k.expiration ?? '?'}${k.reissue ? '  (re-issue)' : ''}`));
  for (const t of c.vaultTokens) lines.push(row('vault token', `${t.accessor}  issued ${t.issuedAt}  expires ${t.expiration ?? '?'}${t.revokedAt ? `  revoked ${t.revokedAt}` : ''}`));
  if (c.end) {
    const by = c.end.by ? ` by ${c.end.by}${c.end.byAdmin ? ' (admin)' : ''}` : '';
    lines.push(row('ended', `${c.end.at}${by}${c.end.reason ? `: "${c.end.reason}"` : ''}`));
  } else {
    lines.push(row('ended', 'not ended'));
  }
  for (const r of c.revocations) {
    lines.push(row('revoked', `deny on ${r.roleArn ?? 'its role'} asked ${r.requestedAt}${r.requestedBy ? ` by ${r.requestedBy}` : ''}; ${r.appliedAt ? `in force since ${r.appliedAt}` : 'not accepted by IAM yet'}`));
  }
  return lines;
}

/** One audit record on one line (no secret is in a record; the detail is shown as JSON). */
export function recordLine(r: Record_): string {
  const who = typeof r.detail?.admin === 'string' ? ` by ${r.detail.admin}` : '';
  return [
    `${r.seq}`, r.at, `${r.event} ${r.decision}${who}`,
    ...(r.developer ? [r.developer] : []), ...(r.template ? [r.template] : []), ...(r.sessionId ? [r.sessionId] : []),
    ...(r.reason ? [`"${r.reason}"`] : []), ...(r.accessKeyId ? [r.accessKeyId] : []), ...(r.vaultAccessor ? [`vault ${r.vaultAccessor}`] : []),
  ].join('  ');
}
