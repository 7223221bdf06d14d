/**
 * What `broker task` / `broker exec` do when the service answers a start with
 * `confirmation_required` (README, "Confirmation"): show what is being confirmed, open the page,
 * wait with one progress line while polling the request through the daemon, and start the session
 * with `confirmedRequest` once a human confirmed it. Also the terminal confirmation (`--confirm-here`,
 * `broker approve`/`deny`): the service's device authorization at the IdP, its user code shown next
 * to the request it decides.
 */
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { isConfirmationPending, type StartAnswer, type StartedTask, type StartRequest } from '../broker/daemon/protocol.js';
import { formatDuration } from '../broker/duration.js';
import { BrokerError, EXIT_CODES } from '../broker/errors.js';
import type { StartRequestView } from '../broker/wire/service-api.js';
import { openBrowser } from './open-browser.js';
import { info, out, printJson, QuietExit } from './output.js';

/** How often a pending request is asked about: a human takes seconds, the service need not be hammered. */
export const REQUEST_POLL_MS = 2_000;
/** Without a terminal (a log, CI), one progress line this often rather than one rewritten in place. */
const PLAIN_PROGRESS_MS = 10_000;

export interface WaitOptions {
  /** Print the request and stop (`--no-wait`). */
  noWait?: boolean | undefined;
  /** Confirm from this terminal: the device flow at the IdP (`--confirm-here`). */
  confirmHere?: boolean | undefined;
  json?: boolean | undefined;
  /** The exit status when the command ends with the request still pending (13; `broker exec`: 125). */
  pendingExit: number;
  /** The command line to run again to go on waiting, for the hint. */
  resume: string;
}

/** The request's parameters as `k=v k=v` (or "none"). */
function paramsText(params: Record<string, string>): string {
  return Object.entries(params).map(([k, v]) => `${k}=${v}`).join(' ') || 'none';
}

/** The request, for the person asked to confirm or approve it (stderr: it is said along the way). */
export function describeRequest(r: StartRequestView, heading: string): void {
  const lines = [
    heading,
    `  template:   ${r.template}`,
    `  parameters: ${paramsText(r.params)}`,
    `  reason:     ${r.reason || '(none given)'}`,
    `  ttl:        ${r.ttlSeconds === null ? "the template's maximum" : formatDuration(r.ttlSeconds)}`,
    `  agent:      ${r.agent}`,
    `  requested:  by ${r.requester} at ${r.createdAt}${r.breakGlass ? ' (BREAK-GLASS)' : ''}`,
    `  request:    ${r.id} (${r.status}; expires ${r.expiresAt})`,
  ];
  if (r.waitingFor.length) lines.push(`  waits for:  ${r.waitingFor.join('; ')}`);
  for (const d of r.decisions) lines.push(`  decided:    ${d.decision} by ${d.by} at ${d.at}${d.reason ? `: ${d.reason}` : ''}`);
  lines.push(`  page:       ${r.url}`);
  info(lines.join('\n'));
}

/** Resolves when the person presses Ctrl-C; `dispose` removes the handler. */
function interruption(): { promise: Promise<'interrupted'>; fired: () => boolean; dispose: () => void } {
  let fired = false;
  let resolve!: (v: 'interrupted') => void;
  const promise = new Promise<'interrupted'>((r) => { resolve = r; });
  const handler = () => { fired = true; resolve('interrupted'); };
  process.on('SIGINT', handler);
  return { promise, fired: () => fired, dispose: () => process.off('SIGINT', handler) };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * One progress line on stderr: on a terminal rewritten in place (carriage return, then ECMA-48 EL
 * "erase in line"), else a new line every PLAIN_PROGRESS_MS so a log does not fill up.
 */
class Progress {
  private readonly tty = process.stderr.isTTY === true;
  private lastPlain = 0;
  private shown = false;

  constructor(private readonly since: number) {}

  update(what: string): void {
    const elapsed = formatClock(Date.now() - this.since);
    const line = `waiting ${elapsed} for ${what} (Ctrl-C stops waiting; the request stays pending)`;
    if (this.tty) {
      process.stderr.write(`\r\x1b[2K${line}`);
      this.shown = true;
    } else if (Date.now() - this.lastPlain >= PLAIN_PROGRESS_MS) {
      this.lastPlain = Date.now();
      info(line);
    }
  }

  /** Ends the rewritten line, so what follows starts on its own. */
  done(): void {
    if (this.tty && this.shown) process.stderr.write('\n');
    this.shown = false;
  }
}

function formatClock(ms: number): string {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

/** Who the request waits for, for the progress line. */
function waitingText(r: StartRequestView): string {
  return r.waitingFor.join('; ') || r.status;
}

/** A request that can no longer be confirmed, as the error it is, with why. */
function finalError(r: StartRequestView): BrokerError {
  if (r.status === 'denied') {
    const d = [...r.decisions].reverse().find((x) => x.decision === 'deny');
    return new BrokerError('forbidden', `start request ${r.id} (${r.template}) was denied${d ? ` by ${d.by}${d.reason ? `: ${d.reason}` : ''}` : ''}`, {
      hint: 'nothing was started; ask again with a better reason, or talk to whoever denied it',
    });
  }
  if (r.status === 'expired') {
    return new BrokerError('conflict', `start request ${r.id} (${r.template}) expired at ${r.expiresAt} before it was confirmed and started`, {
      hint: 'nothing was started; ask again: broker task …',
    });
  }
  if (r.status === 'cancelled') {
    return new BrokerError('conflict', `start request ${r.id} (${r.template}) was cancelled`, { hint: 'nothing was started; ask again: broker task …' });
  }
  return new BrokerError('conflict', `start request ${r.id} (${r.template}) is already started (session ${r.sessionId ?? 'unknown'})`, {
    hint: 'a confirmed request starts one session, once; see it with: broker status',
  });
}

/**
 * A start (`start` for broker task, `ensure` for broker exec) that may need a human: a session
 * started or reused at once, or the request shown, confirmed and then started. Throws QuietExit
 * (`--no-wait`, Ctrl-C) after printing the request; a denied, expired or cancelled request is a
 * BrokerError.
 */
export async function startConfirmed(first: () => Promise<StartAnswer>, request: StartRequest, opts: WaitOptions): Promise<StartedTask> {
  const a = await first();
  if (!isConfirmationPending(a)) return a;
  let r = a.request;
  describeRequest(r, `broker: ${a.message}`);
  if (opts.noWait) {
    // The id is the result (stdout); --json the request as the service shows it.
    if (opts.json) printJson({ request: r });
    else out(r.id);
    info(`  not waiting (--no-wait): confirm it at the page above, or: broker approve ${r.id}; then run the same command again to start it`);
    info(`  cancel it: broker requests cancel ${r.id}`);
    throw new QuietExit(opts.pendingExit);
  }
  const stop = interruption();
  const progress = new Progress(Date.parse(r.createdAt) || Date.now());
  try {
    if (opts.confirmHere) {
      const decided = await deviceDecision(r, 'confirm', '', stop.promise);
      if (decided === 'interrupted') return stillWaiting(r, opts, progress);
      r = decided;
    } else if (r.status === 'pending' && openBrowser(r.url)) {
      info('  opened the page in your browser');
    }
    while (r.status === 'pending') {
      progress.update(waitingText(r));
      if (await Promise.race([sleep(REQUEST_POLL_MS), stop.promise]) === 'interrupted') return stillWaiting(r, opts, progress);
      const next = await Promise.race([callDaemon({ op: 'request', id: r.id }), stop.promise]);
      if (next === 'interrupted') return stillWaiting(r, opts, progress);
      r = next;
    }
  } finally {
    stop.dispose();
    progress.done();
  }
  if (r.status !== 'confirmed') throw finalError(r);
  const confirmedBy = r.decisions.filter((d) => d.decision !== 'deny').map((d) => `${d.decision === 'confirm' ? 'confirmed' : 'approved'} by ${d.by}`).join(', ');
  info(`broker: start request ${r.id} ${confirmedBy || 'confirmed'}; starting the session`);
  const started = await callDaemon({ op: 'start', request: { ...request, confirmedRequest: r.id } });
  if (isConfirmationPending(started)) {
    throw new BrokerError('internal', `the service asked again for a confirmation of start request ${r.id}, which is confirmed`);
  }
  return started;
}

function stillWaiting(r: StartRequestView, opts: WaitOptions, progress: Progress): never {
  progress.done();
  if (opts.json) printJson({ request: r });
  info(`broker: stopped waiting; start request ${r.id} stays pending until ${r.expiresAt}`);
  info(`  go on waiting: ${opts.resume}`);
  info(`  cancel it: broker requests cancel ${r.id}`);
  throw new QuietExit(opts.pendingExit);
}

/**
 * A decision from this terminal: the service starts a device authorization at the IdP (with the
 * request's max_age), this shows its user code next to the request it decides, and polls until the
 * login at the IdP is done (the service records the decision of whoever logged in), refused or
 * expired. Returns the request as it then stands; 'interrupted' on Ctrl-C when `interrupted` is given.
 */
export async function deviceDecision(
  r: StartRequestView, decision: 'confirm' | 'approve' | 'deny', reason: string, interrupted?: Promise<'interrupted'>,
): Promise<StartRequestView | 'interrupted'> {
  try {
    return await deviceDecisionOnce(r, decision, reason, interrupted);
  } catch (e) {
    // The service's step-up challenge (RFC 9470): the login at the IdP was too old, nothing was
    // decided or spent; once more with a new code, for which the service asks the IdP for a new login.
    if (!(e instanceof BrokerError) || e.code !== 'confirmation_required') throw e;
    info(`broker: ${e.message}; nothing was decided. Once more, with a new code:`);
    try {
      return await deviceDecisionOnce(r, decision, reason, interrupted);
    } catch (again) {
      if (!(again instanceof BrokerError) || again.code !== 'confirmation_required') throw again;
      throw new BrokerError('confirmation_required', `${again.message}; nothing was decided and start request ${r.id} stays pending`, {
        hint: `log out at the IdP (or close its browser session) and run the command again, or decide on the page: ${r.url}`,
      });
    }
  }
}

async function deviceDecisionOnce(
  r: StartRequestView, decision: 'confirm' | 'approve' | 'deny', reason: string, interrupted?: Promise<'interrupted'>,
): Promise<StartRequestView | 'interrupted'> {
  const started = await callDaemon({ op: 'confirm-device', id: r.id, decision, reason });
  const c = started.confirmation;
  const verb = decision === 'confirm' ? 'confirm' : decision === 'approve' ? 'approve' : 'deny';
  // The service asks the IdP for a login after the request (device-confirmations.ts): an older IdP session will not do.
  const fresh = r.confirm.maxAgeSeconds === 0 ? 'a new login' : `a login after the request, at most ${formatDuration(r.confirm.maxAgeSeconds)} old`;
  info([
    `To ${verb} start request ${r.id} (${r.template}, ${paramsText(r.params)}, asked by ${r.requester}),`,
    `log in at the IdP (${fresh}): open ${c.verification_uri_complete ?? c.verification_uri}`,
    `  and enter code: ${c.user_code}   (the code decides this request only; expires in ${formatDuration(c.expires_in)})`,
  ].join('\n'));
  const progress = new Progress(Date.now());
  const never = new Promise<never>(() => {});
  try {
    for (;;) {
      progress.update(`your login at the IdP (code ${c.user_code})`);
      if (await Promise.race([sleep(Math.max(c.interval * 1000, REQUEST_POLL_MS)), interrupted ?? never]) === 'interrupted') return 'interrupted';
      const s = await Promise.race([callDaemon({ op: 'confirmation', id: r.id, confirmation: c.id }), interrupted ?? never]);
      if (s === 'interrupted') return 'interrupted';
      if (s.status === 'pending') continue;
      progress.done();
      if (s.status === 'denied') throw new BrokerError('forbidden', `the login at the IdP for start request ${r.id} was refused there: nothing was decided`);
      if (s.status === 'expired') {
        throw new BrokerError('conflict', `the code ${c.user_code} expired before the login at the IdP was done: nothing was decided`, { hint: 'run the command again for a new code' });
      }
      return s.request;
    }
  } finally {
    progress.done();
  }
}

/** The exit status of a command that ends with its request pending: `confirmation_required`'s. */
export const PENDING_EXIT = EXIT_CODES.confirmation_required;

/** A word for a POSIX shell: as is when safe, else in single quotes. */
export function shellWord(w: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(w) ? w : `'${w.replaceAll("'", `'\\''`)}'`;
}

/** The options of a start as a command line, for "go on waiting: …". */
export function startWords(r: StartRequest): string[] {
  return [
    ...Object.entries(r.params).flatMap(([k, v]) => ['--param', `${k}=${v}`]),
    ...(r.ttl ? ['--ttl', r.ttl] : []), ...(r.reason ? ['--reason', r.reason] : []), '--agent', r.agent, ...(r.breakGlass ? ['--break-glass'] : []),
  ].map(shellWord);
}

/** `--break-glass` is for an emergency, and says why: the reason is part of its notice and audit record. */
export function checkBreakGlass(breakGlass: boolean | undefined, reason: string): void {
  if (breakGlass && reason.trim() === '') {
    throw new BrokerError('invalid_request', '--break-glass needs --reason', { hint: 'say why it cannot wait for approvers: --break-glass --reason "…"' });
  }
}
