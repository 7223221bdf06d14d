/**
 * The request page's HTML: server-rendered, escaped template strings, no script, one small inline
 * style sheet, readable on a phone (viewport meta, one column). Nothing secret is ever written here:
 * no token, code, cookie or session id; the CSRF token is the only hidden value (it is per web
 * session, useless without the HttpOnly cookie, and not a credential).
 */
import type { Principal } from '../../identity/principal.js';
import { MAX_REASON_CHARS } from '../../limits/names.js';
import type { StartRequest } from '../../requests/start-requests.js';
import type { StartRequestView } from '../../wire/service-api.js';

/** HTML-escapes text for element content and double-quoted attributes. */
export function esc(s: unknown): string {
  return String(s).replace(/[&<>"']/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[ch]!);
}

const STYLE = `body{font:16px/1.45 system-ui,sans-serif;margin:0 auto;max-width:46rem;padding:1rem;color:#1b1b1b}
h1{font-size:1.35rem}h2{font-size:1.1rem;margin-top:1.5rem}table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:.3rem .4rem;border-bottom:1px solid #ddd}th{width:9rem;font-weight:600}
pre{background:#f4f4f4;padding:.6rem;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.85rem}code{overflow-wrap:anywhere}
.status{display:inline-block;padding:.1rem .5rem;border-radius:.3rem;background:#eee}
.pending{background:#fff3c4}.confirmed,.started{background:#d8f5d8}.denied,.expired,.cancelled{background:#f8d7d7}
form.decide{margin:.8rem 0;padding:.8rem;border:1px solid #ccc;border-radius:.4rem}
input[type=text]{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem;margin:.3rem 0 .6rem}
button{font-size:1rem;padding:.55rem 1.1rem;margin:.2rem .4rem .2rem 0;border-radius:.3rem;border:1px solid #888;background:#fafafa}
button.approve,button.confirm{background:#1f7a1f;color:#fff;border-color:#1f7a1f}button.deny{background:#a32020;color:#fff;border-color:#a32020}
.error{color:#a32020}.note{color:#555;font-size:.9rem}ul.requests{padding-left:1.1rem}`;

export function layout(title: string, body: string, who?: Principal, refreshTo?: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
${refreshTo ? `<meta http-equiv="refresh" content="0;url=${esc(refreshTo)}">` : ''}
<title>${esc(title)} · credential broker</title><style>${STYLE}</style></head>
<body><header class="note"><a href="/requests">Start requests</a>${who ? ` · signed in as ${esc(who.id)}` : ''}</header>
<main>${body}</main></body></html>`;
}

function status(s: string): string {
  return `<span class="status ${esc(s)}">${esc(s)}</span>`;
}

function params(p: Record<string, string>): string {
  const entries = Object.entries(p);
  return entries.length ? entries.map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`).join(', ') : '<span class="note">none</span>';
}

function duration(seconds: number | null): string {
  if (seconds === null) return "the template's maximum";
  if (seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}

function requestLine(v: StartRequestView): string {
  return `<li><a href="/requests/${esc(v.id)}">${esc(v.template)}</a> ${params(v.params)} by ${esc(v.requester)} ${status(v.status)}
<span class="note">${esc(v.createdAt)}${v.reason ? ` · “${esc(v.reason)}”` : ''}</span></li>`;
}

function list(views: StartRequestView[], none: string): string {
  return views.length ? `<ul class="requests">${views.map(requestLine).join('\n')}</ul>` : `<p class="note">${esc(none)}</p>`;
}

export function listPage(who: Principal, toDecide: StartRequestView[], mine: StartRequestView[]): string {
  return layout('Start requests', `<h1>Start requests</h1>
<h2>Waiting for your decision</h2>${list(toDecide, 'Nothing waits for you.')}
<h2>Your own requests</h2>${list(mine, 'You have made no start requests lately.')}`, who);
}

export interface Grant {
  sessionPolicy: string | null;
  managedPolicyArns: string[];
  roleArn: string | null;
  vaultPolicies: string[];
  sessionSeconds: number | null;
}

export interface RequestPageModel {
  who: Principal;
  request: StartRequest;
  view: StartRequestView;
  grant: Grant;
  /** Which buttons this person gets (the service decides again when the decision arrives). */
  may: { confirm: boolean; approve: boolean; deny: boolean };
  /** For approvers: the requester's other requests (pending and recent). */
  others: StartRequestView[] | undefined;
  csrf: string;
  /** A line about the last decision (the callback's outcome). */
  notice?: string | undefined;
}

export function requestPage(m: RequestPageModel): string {
  const v = m.view;
  const rows: [string, string][] = [
    ['Status', status(v.status)],
    ['Asked by', esc(v.requester)],
    ['Template', `<code>${esc(v.template)}</code>`],
    ['Parameters', params(v.params)],
    ['Reason', v.reason ? esc(v.reason) : '<span class="note">none given</span>'],
    ['Session length', esc(duration(v.ttlSeconds ?? m.grant.sessionSeconds))],
    ['Agent', `<code>${esc(v.agent)}</code>`],
    ['Confirmation', `${esc(v.confirm.mode)}${v.confirm.approvals ? `, ${v.confirm.approvals} approval${v.confirm.approvals > 1 ? 's' : ''}` : ''}; ${v.confirm.maxAgeSeconds === 0 ? 'a new IdP login for each decision' : `IdP login at most ${esc(v.confirm.maxAgeSeconds)}s old`}${v.breakGlass ? ' · <strong>break-glass</strong>' : ''}`],
    ['Waiting for', v.waitingFor.length ? v.waitingFor.map(esc).join('<br>') : '<span class="note">nobody</span>'],
    ['Requested', esc(v.createdAt)],
    ['Expires', esc(v.expiresAt)],
  ];
  if (v.sessionId) rows.push(['Session', `<code>${esc(v.sessionId)}</code>`]);
  const decisions = v.decisions.length
    ? `<table>${v.decisions.map((d) => `<tr><td>${esc(d.decision)}</td><td>${esc(d.by)}</td><td>${d.reason ? esc(d.reason) : ''}</td><td class="note">${esc(d.at)} (${esc(d.via)})</td></tr>`).join('')}</table>`
    : '<p class="note">No decision yet.</p>';
  const g = m.grant;
  const grant = `<h2>What it grants</h2>
${g.roleArn ? `<p>AWS role <code>${esc(g.roleArn)}</code>, with this session policy (what AWS enforces on top of the role):</p>` : '<p class="note">No AWS credentials.</p>'}
${g.sessionPolicy ? `<pre id="session-policy">${esc(g.sessionPolicy)}</pre>` : ''}
${g.managedPolicyArns.length ? `<p>Managed policies: ${g.managedPolicyArns.map((a) => `<code>${esc(a)}</code>`).join(', ')}</p>` : ''}
${g.vaultPolicies.length ? `<p>Vault policies: ${g.vaultPolicies.map((p) => `<code>${esc(p)}</code>`).join(', ')}</p>` : ''}`;
  const buttons = [
    m.may.confirm ? '<button class="confirm" name="decision" value="confirm" type="submit">Confirm</button>' : '',
    m.may.approve ? '<button class="approve" name="decision" value="approve" type="submit">Approve</button>' : '',
    m.may.deny ? '<button class="deny" name="decision" value="deny" type="submit">Deny</button>' : '',
  ].join('');
  const form = buttons && v.status === 'pending'
    ? `<form class="decide" id="decide" method="post" action="/requests/${esc(v.id)}/decision">
<input type="hidden" name="csrf" value="${esc(m.csrf)}">
<label for="reason">Reason (shown to the requester and audited)</label>
<input type="text" id="reason" name="reason" maxlength="${MAX_REASON_CHARS}" autocomplete="off">
${buttons}
<p class="note">Each decision asks the identity provider for a fresh login${v.confirm.maxAgeSeconds === 0 ? ' (your password, every time)' : ` (at most ${esc(v.confirm.maxAgeSeconds)}s old)`}.</p></form>`
    : '';
  const others = m.others === undefined ? '' : `<h2>Other requests of ${esc(v.requester)}</h2>${list(m.others, 'None lately.')}`;
  return layout(`${v.template} for ${v.requester}`, `<h1>Start request <code>${esc(v.id)}</code></h1>
${m.notice ? `<p id="notice">${esc(m.notice)}</p>` : ''}
<table id="request">${rows.map(([k, val]) => `<tr><th>${esc(k)}</th><td>${val}</td></tr>`).join('\n')}</table>
${form}
<h2>Decisions</h2>${decisions}
${grant}
${others}`, m.who);
}

export function errorPage(statusCode: number, message: string, hint?: string, who?: Principal): string {
  return layout('Error', `<h1>${statusCode === 404 ? 'Not found' : statusCode === 403 ? 'Refused' : 'Something went wrong'}</h1>
<p class="error" id="error">${esc(message)}</p>${hint ? `<p class="note">${esc(hint)}</p>` : ''}
<p><a href="/requests">Back to the start requests</a></p>`, who);
}

/** After a login: a same-origin hop, so the Strict session cookie goes with the next request. */
export function continuePage(to: string, message: string, who: Principal): string {
  return layout('Signed in', `<p id="notice">${esc(message)}</p><p><a href="${esc(to)}">Continue</a></p>`, who, to);
}
