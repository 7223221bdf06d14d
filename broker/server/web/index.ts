/**
 * The page where people confirm, approve and deny start requests (README, "The request page").
 * Viewing needs an IdP login in this web session; each decision needs a login of its own, made for
 * it: the button stores the decision in a login flow (after the CSRF check) and sends the browser
 * to the IdP with the request's `max_age`; the callback verifies the ID token and hands it to
 * `StartRequests.decide`, which checks its freshness and spends it. Only the requester and the
 * approvers see a request; anybody else gets the same 404 as for a request that does not exist.
 */
import type { Context, Hono } from 'hono';
import { getCookie } from 'hono/cookie';
import { BrokerError, isBrokerError } from '../../errors.js';
import type { IdTokenVerifier } from '../../identity/id-token-verifier.js';
import type { Principal } from '../../identity/principal.js';
import type { Logger } from '../../log.js';
import { isApprover, type StartRequest, type StartRequests } from '../../requests/start-requests.js';
import { requestPageDecisionForm, REQUEST_ID_RE } from '../../wire/service-api.js';
import { newFlowSecrets, type WebLogin } from './oidc-login.js';
import { continuePage, errorPage, listPage, requestPage } from './pages.js';
import type { PendingDecision, WebSession, WebSessions } from './web-sessions.js';

export { WebLogin } from './oidc-login.js';
export { WebSessions } from './web-sessions.js';

export interface RequestPagesDeps {
  requests: StartRequests;
  login: WebLogin;
  sessions: WebSessions;
  /** The page client's verifier (its audience): spends the ID token of a login made only to view. */
  verifier: IdTokenVerifier;
  /** The IdP's origin: the decision form redirects there (CSP form-action covers redirects). */
  issuer: string;
  log: Logger;
}

/** `next` after a login: this page's own paths only (no open redirect, RFC 9700 §4.11). */
export function safeNext(next: string | undefined): string {
  if (next === undefined || next === '') return '/requests';
  if (next === '/requests' || /^\/requests\/req_[a-z2-7]{26}$/.test(next)) return next;
  throw new BrokerError('invalid_request', 'next must be a path of the request page', {
    details: [{ path: 'next', message: 'must be /requests or /requests/<request id>', hint: 'open the request page from its link' }],
  });
}

const DECISION_DONE: Record<PendingDecision['decision'], string> = { confirm: 'Confirmed', approve: 'Approved', deny: 'Denied' };

export function mountRequestPages(app: Hono<any>, deps: RequestPagesDeps): void {
  const { requests, sessions, login } = deps;
  const formAction = `'self' ${new URL(deps.issuer).origin}`;

  const html = (c: Context, body: string, status = 200) => {
    c.header('content-type', 'text/html; charset=utf-8');
    // Pages name people and requests: never cached; no script at all; not framed (clickjacking of
    // the buttons); the callback's URL (with its code) is never sent on as a Referer.
    c.header('cache-control', 'no-store');
    c.header('content-security-policy', `default-src 'none'; style-src 'unsafe-inline'; form-action ${formAction}; frame-ancestors 'none'; base-uri 'none'`);
    c.header('x-content-type-options', 'nosniff');
    c.header('referrer-policy', 'no-referrer');
    return c.body(body, status as 200);
  };

  /** Renders a refusal as a page with its status; anything unexpected is a plain 500 page (detail in the log). */
  const page = (handler: (c: Context) => Promise<Response>) => async (c: Context): Promise<Response> => {
    try {
      return await handler(c);
    } catch (e) {
      if (isBrokerError(e)) {
        if (e.status >= 500) deps.log.warn({ code: e.code, msg: e.message, cause: (e.cause as Error)?.message }, 'request page failed');
        else if (e.cause) deps.log.info({ code: e.code, msg: e.message, cause: (e.cause as Error)?.message }, 'request page refused');
        const detail = e.details?.map((d) => `${d.path}: ${d.message}`).join('; ');
        return html(c, errorPage(e.status, e.message, [detail, e.hint].filter(Boolean).join(' · ') || undefined, current(c)?.principal), e.status);
      }
      deps.log.error({ err: (e as Error).message, stack: (e as Error).stack }, 'request page: unhandled error');
      return html(c, errorPage(500, 'internal error'), 500);
    }
  };

  const current = (c: Context): WebSession | undefined => sessions.get(getCookie(c, sessions.names.session));

  /** Sends the browser to the IdP; a decision waits in the flow until the callback. */
  const toIdp = async (c: Context, s: WebSession | undefined, next: string, decision?: PendingDecision, maxAgeSeconds?: number) => {
    const session = s ?? sessions.create();
    const secrets = newFlowSecrets();
    const flow = sessions.beginFlow(session, { ...secrets, next, decision });
    const url = await login.authorizationUrl(flow, maxAgeSeconds);
    if (!s) c.header('set-cookie', sessions.sessionCookie(session), { append: true });
    c.header('set-cookie', sessions.flowCookie(flow), { append: true });
    c.header('cache-control', 'no-store');
    // 303: the decision form's POST becomes a GET at the IdP (RFC 9110 §15.4.4).
    return c.redirect(url, 303);
  };

  const loginFirst = (c: Context, next: string) => c.redirect(`/requests/login?next=${encodeURIComponent(next)}`, 303);

  const viewable = async (who: Principal, id: string): Promise<StartRequest> => {
    const r = REQUEST_ID_RE.test(id) ? await requests.find(id) : undefined;
    // The same answer for "no such request" and "not yours to see": no oracle for request ids.
    if (!r || !requests.mayView(r, who)) throw new BrokerError('not_found', `no start request ${id.slice(0, 40)}`);
    return r;
  };

  // Before /requests/:id, so these two are not taken for request ids.
  app.get('/requests/login', page(async (c) => toIdp(c, current(c), safeNext(c.req.query('next')))));

  app.get('/requests/callback', page(async (c) => {
    const flow = sessions.takeFlow(getCookie(c, sessions.names.flow));
    c.header('set-cookie', sessions.clearFlowCookie(), { append: true });
    if (!flow) {
      throw new BrokerError('invalid_request', 'this login is unknown or has expired', { hint: 'start again from the request page (a login must finish in the browser that began it, within 10 minutes)' });
    }
    const search = new URL(c.req.url).search;
    const token = await login.finish(flow, search);
    const before = sessions.get(flow.webSessionId);
    let message = `Signed in as ${token.principal.id}.`;
    let refusal: BrokerError | undefined;
    if (flow.decision) {
      const d = flow.decision;
      try {
        await requests.decide(d.requestId, { token, loginStartedAt: flow.startedAt, via: 'page' }, d.decision, d.reason);
        message = `${DECISION_DONE[d.decision]} start request ${d.requestId} as ${token.principal.id}.`;
      } catch (e) {
        if (!isBrokerError(e)) throw e;
        refusal = e;
      }
    }
    // A login for a decision is spent by it; one made only to view (or a refused decision's, not yet
    // spent) is spent here: an ID token signs in once.
    let who = token.principal;
    if (!flow.decision || refusal) {
      try { who = await deps.verifier.accept(token); } catch (e) { if (!refusal) throw e; }
    }
    const s = sessions.loggedIn(before, who);
    c.header('set-cookie', sessions.sessionCookie(s), { append: true });
    if (refusal) throw refusal;
    return html(c, continuePage(flow.next, message, who));
  }));

  app.get('/requests', page(async (c) => {
    const s = current(c);
    if (!s?.principal) return loginFirst(c, '/requests');
    const who = s.principal;
    const [toDecide, mine] = await Promise.all([requests.listForApprover(who), requests.recentOf(who.id)]);
    return html(c, listPage(who, toDecide.map((r) => requests.view(r)), mine.map((r) => requests.view(r))));
  }));

  app.get('/requests/:id', page(async (c) => {
    const id = c.req.param('id') ?? '';
    const s = current(c);
    if (!s?.principal) return loginFirst(c, REQUEST_ID_RE.test(id) ? `/requests/${id}` : '/requests');
    const who = s.principal;
    const r = await viewable(who, id);
    const requester = r.requester === who.id;
    const approver = !requester && isApprover(r, who);
    const confirmed = r.decisions.some((d) => d.decision === 'confirm');
    const approvedByMe = r.decisions.some((d) => d.decision === 'approve' && d.by === who.id);
    const others = approver ? (await requests.recentOf(r.requester)).filter((o) => o.id !== r.id).map((o) => requests.view(o)) : undefined;
    return html(c, requestPage({
      who, request: r, view: requests.view(r), grant: requests.grantOf(r), csrf: s.csrf, others,
      may: { confirm: requester && !confirmed, approve: approver && r.approvals > 0 && !approvedByMe, deny: requester || approver },
    }));
  }));

  app.post('/requests/:id/decision', page(async (c) => {
    const s = current(c);
    const raw = await formOf(c);
    // First, before anything is read or changed: a POST without this web session's CSRF token is
    // another site's (SameSite=Strict is the first defence, this the second: OWASP CSRF cheat sheet).
    if (!s || !sessions.csrfOk(s, typeof raw.csrf === 'string' ? raw.csrf : undefined)) {
      throw new BrokerError('forbidden', 'this form is not from your page session', { hint: 'reload the request page and decide again' });
    }
    if (!s.principal) return loginFirst(c, '/requests');
    const parsed = requestPageDecisionForm.safeParse(raw);
    if (!parsed.success) {
      throw new BrokerError('invalid_request', 'the decision form is invalid', {
        details: parsed.error.issues.map((i) => ({ path: i.path.join('.') || 'form', message: i.message })),
      });
    }
    const r = await viewable(s.principal, c.req.param('id') ?? '');
    if (r.status !== 'pending') throw new BrokerError('conflict', `start request ${r.id} is ${r.status}: it takes no decisions`);
    const { decision, reason } = parsed.data;
    return toIdp(c, s, `/requests/${r.id}`, { requestId: r.id, decision, reason }, r.maxAgeSeconds);
  }));
}

/** The urlencoded form of a POST (what an HTML form sends); anything else is a 400. */
async function formOf(c: Context): Promise<Record<string, unknown>> {
  const type = c.req.header('content-type') ?? '';
  if (!/^application\/x-www-form-urlencoded\b/i.test(type)) {
    throw new BrokerError('invalid_request', 'a decision is sent by the page\'s form', { hint: 'use the buttons of the request page' });
  }
  const form = new URLSearchParams(await c.req.text());
  const out: Record<string, unknown> = {};
  for (const [k, v] of form) out[k] = k in out ? [out[k], v].flat() : v;
  return out;
}
