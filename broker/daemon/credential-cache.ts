import { BrokerError, isBrokerError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ProcessCredentials, ReissueCredentialsResponse, SessionView } from '../wire/service-api.js';
import type { CacheStats, EntryStatus } from './protocol.js';
import { SingleFlight } from './single-flight.js';
import { canHandOut, isUsable, refreshAt, type HeldCredentials } from './refresh-policy.js';
import { changedWhileWaiting, noActiveSession, sessionEnded, sessionGone, Superseded, TaskCache, type TaskCacheOptions, type TaskEntry } from './task-cache.js';

/**
 * Task credentials held in the daemon's memory, and only there: one entry per task template (the
 * service allows one active session per template and developer). Credentials are refreshed ahead of
 * time (refresh-policy.ts), so a credential_process call is answered from memory; concurrent callers
 * share one upstream request (single flight); when the service or STS is down the cached
 * credentials keep being served until they expire while the daemon retries with back-off.
 */

/** What the service answers to a re-issue (`POST /v1/sessions/:id/credentials`). */
export type IssuedCredentials = ReissueCredentialsResponse;

/** Where fresh credentials come from: the broker service, through the developer's login. */
export interface CredentialUpstream {
  /** The developer's active session of this template, if any. */
  findSession(template: string): Promise<SessionView | undefined>;
  /** Fresh credentials under an active session. */
  issue(sessionId: string): Promise<IssuedCredentials>;
}

export interface CredentialCacheOptions extends TaskCacheOptions {
  upstream: CredentialUpstream;
  log: Pick<Logger, 'info' | 'warn' | 'error'>;
}

interface Held extends HeldCredentials {
  doc: ProcessCredentials;
}

type Health = EntryStatus['health'];

interface Entry extends TaskEntry {
  sessionEndsAt: number;
  creds?: Held;
  inflight?: Promise<Held>;
  timer?: NodeJS.Timeout;
  health: Health;
}

export class CredentialCache extends TaskCache<Entry> {
  private readonly discovering = new SingleFlight<string, Held>();
  readonly stats: CacheStats = { credentialRequests: 0, servedFromMemory: 0, waitedForUpstream: 0, sharedUpstream: 0, upstreamIssues: 0 };

  constructor(private readonly opts: CredentialCacheOptions) {
    super(opts);
  }

  /** Credentials for a credential_process call: from memory whenever they are good enough. */
  async get(template: string): Promise<ProcessCredentials> {
    this.stats.credentialRequests++;
    return this.lookup(template, true);
  }

  /**
   * Credentials of one task session of the template (the container endpoint: a `broker exec`'s
   * token serves the session it ran under, never a later session of the same template).
   */
  async getForSession(template: string, sessionId: string): Promise<ProcessCredentials> {
    if ((this.entries.get(template)?.session.id ?? sessionId) !== sessionId) throw otherSession(template);
    const doc = await this.get(template);
    if (this.entries.get(template)?.session.id !== sessionId) throw otherSession(template);
    return doc;
  }

  private async lookup(template: string, mayRetry: boolean): Promise<ProcessCredentials> {
    const e = this.entries.get(template);
    const now = this.now();
    if (e && now >= e.sessionEndsAt) {
      this.drop(template);
      throw sessionEnded(template, e.sessionEndsAt);
    }
    if (!e) this.refuseWithdrawn(template);
    if (e?.creds && canHandOut(e.creds, e.sessionEndsAt, now)) {
      this.stats.servedFromMemory++;
      this.maybeRefresh(e);
      return e.creds.doc;
    }
    if (e?.creds && e.health === 'retrying') {
      // During an outage, what is still valid is served without waiting on an upstream that is down.
      if (isUsable(e.creds, now)) {
        this.stats.servedFromMemory++;
        return e.creds.doc;
      }
      // Expired, and the next attempt is not due yet: the back-off holds for callers too (a client
      // that calls in a loop must not turn it into one upstream request per call). Fail fast.
      if (!e.inflight && now < e.retryAt) throw noneLeft(template, e.lastError, e.creds.expiresAt, now);
    }
    this.stats.waitedForUpstream++;
    try {
      return (await (e ? this.refresh(e) : this.discover(template))).doc;
    } catch (err) {
      if (err instanceof Superseded) {
        // The entry this call waited on was replaced (a new task start, `broker exec` with another
        // agent) or dropped (`broker end`) meanwhile: ask again, about what is there now.
        if (mayRetry) return this.lookup(template, false);
        throw changedWhileWaiting(template);
      }
      if (!e) throw err;
      const current = this.entries.get(template);
      if (current?.creds && isUsable(current.creds, this.now())) return current.creds.doc;
      throw noneLeft(template, err, e.creds?.expiresAt, this.now());
    }
  }

  /** Credentials the service just issued (a task start): cached so the first call needs no network. */
  put(issued: IssuedCredentials): void {
    const template = issued.session.template;
    this.drop(template);
    this.forgetWithdrawn(template);
    const e = this.newEntry(issued.session);
    this.accept(e, issued);
    this.entries.set(template, e);
  }

  protected override forget(e: Entry): void {
    if (e.timer) clearTimeout(e.timer);
    delete e.timer;
    delete e.creds;
  }

  status(): EntryStatus[] {
    return [...this.entries.values()].map((e) => {
      const next = e.health === 'retrying' ? e.retryAt : e.creds ? refreshAt(e.creds, e.sessionEndsAt) : Number.NaN;
      return {
        template: e.template,
        sessionId: e.session.id,
        credentialsExpireAt: e.creds ? new Date(e.creds.expiresAt).toISOString() : null,
        nextRefreshAt: Number.isFinite(next) ? new Date(next).toISOString() : null,
        health: e.health,
        refreshing: e.inflight !== undefined,
        lastError: e.lastError?.message ?? null,
      };
    });
  }

  override tick(): void {
    const now = this.now();
    for (const e of [...this.entries.values()]) {
      if (now >= e.sessionEndsAt) {
        this.opts.log.info({ template: e.template, session: e.session.id }, 'task session reached its end; credentials dropped');
        this.dropEntry(e);
      } else {
        this.maybeRefresh(e);
      }
    }
  }

  private newEntry(session: SessionView): Entry {
    return { template: session.template, session, sessionEndsAt: Date.parse(session.expiresAt), health: 'ok', failures: 0, retryAt: 0 };
  }

  private accept(e: Entry, issued: IssuedCredentials): Held {
    const held: Held = { doc: issued.credentials, issuedAt: this.now(), expiresAt: Date.parse(issued.credentials.Expiration) };
    e.session = issued.session;
    e.sessionEndsAt = Date.parse(issued.session.expiresAt);
    e.creds = held;
    if (e.health === 'retrying') this.opts.log.info({ template: e.template, session: e.session.id }, 'credentials refreshed again after upstream failures');
    e.health = 'ok';
    this.resetBackOff(e);
    this.schedule(e);
    return held;
  }

  /** The first request for a template: find its session and fetch credentials, once for all callers. */
  private discover(template: string): Promise<Held> {
    if (this.discovering.isPending(template)) this.stats.sharedUpstream++;
    return this.discovering.run(template, async () => {
      const session = await this.opts.upstream.findSession(template);
      this.settleWithdrawn(template, session);
      if (!session) throw noActiveSession(template);
      const e = this.newEntry(session);
      this.entries.set(template, e);
      try {
        return await this.refresh(e);
      } catch (err) {
        this.dropEntry(e);
        throw err;
      }
    });
  }


  private maybeRefresh(e: Entry): void {
    if (e.inflight || !e.creds) return;
    const due = e.health === 'retrying' ? e.retryAt : refreshAt(e.creds, e.sessionEndsAt);
    if (this.now() >= due) this.refresh(e).catch(() => { /* recorded on the entry; logged on state change */ });
  }

  private schedule(e: Entry): void {
    if (e.timer) clearTimeout(e.timer);
    delete e.timer;
    if (!e.creds) return;
    const due = e.health === 'retrying' ? e.retryAt : refreshAt(e.creds, e.sessionEndsAt);
    const at = Math.min(due, e.sessionEndsAt);
    if (!Number.isFinite(at)) return;
    // setTimeout takes at most 2^31-1 ms; the tick covers anything later.
    e.timer = setTimeout(() => this.tick(), Math.min(Math.max(0, at - this.now()), 2 ** 31 - 1));
    e.timer.unref();
  }

  /** One upstream issuance per entry at a time, shared by every caller waiting for it. */
  private refresh(e: Entry): Promise<Held> {
    if (e.inflight) {
      this.stats.sharedUpstream++;
      return e.inflight;
    }
    e.inflight = (async () => {
      this.stats.upstreamIssues++;
      let issued: IssuedCredentials;
      try {
        issued = await this.opts.upstream.issue(e.session.id);
      } catch (err) {
        // Only the entry that is still held is marked failed (or dropped): a replaced one is history.
        if (!this.holds(e)) throw new Superseded();
        this.failed(e, err);
        throw err;
      }
      if (!this.holds(e)) throw new Superseded();
      return this.accept(e, issued);
    })().finally(() => { delete e.inflight; });
    return e.inflight;
  }

  private failed(e: Entry, err: unknown): void {
    const error = isBrokerError(err) ? err : new BrokerError('internal', (err as Error)?.message ?? String(err), { cause: err });
    if (sessionGone(error)) {
      this.opts.log.info({ template: e.template, session: e.session.id, reason: error.message }, 'task session no longer active; credentials dropped');
      // Its reason stands for the template (an admin's end or freeze), until the service says otherwise.
      this.withdraw(e.template, e.session.id, error);
      return;
    }
    this.backOff(e, error);
    if (e.health === 'ok') {
      // Logged once per change of state, not once per retry.
      this.opts.log.warn({
        template: e.template, session: e.session.id, code: error.code, reason: error.message,
        servingUntil: e.creds ? new Date(e.creds.expiresAt).toISOString() : null,
      }, 'cannot refresh credentials; serving the cached ones until they expire and retrying with back-off');
    }
    e.health = 'retrying';
    this.schedule(e);
  }
}

function otherSession(template: string): BrokerError {
  return new BrokerError('conflict', `the "${template}" task session this command was started under has ended`, {
    hint: `run it again: broker exec ${template} -- …`,
  });
}

/**
 * One clear line for credential_process when nothing valid is left: what is wrong, since when, and
 * what the developer can do. (The service's own hints, e.g. "check aws.stsEndpoint", are for its
 * operator: they stay in `cause`, and the daemon log.)
 */
function noneLeft(template: string, err: unknown, expiresAt: number | undefined, now: number): BrokerError {
  if (!isBrokerError(err)) return new BrokerError('internal', `no valid credentials for "${template}"`, { cause: err });
  if (err.code === 'not_found' || err.code === 'conflict' || err.code === 'not_logged_in' || err.code === 'frozen') return err;
  const expired = expiresAt === undefined ? '' : `; the cached ones expire${expiresAt <= now ? 'd' : ''} at ${new Date(expiresAt).toISOString()}`;
  return new BrokerError(err.code, `no valid credentials for "${template}": ${err.message}${expired}`, {
    cause: err,
    hint: developerHint(err),
  });
}

function developerHint(err: BrokerError): string {
  const retrying = 'the daemon keeps retrying: try again later, or see its last attempt with: broker daemon status';
  switch (err.code) {
    case 'upstream_unavailable':
    case 'upstream_error':
    case 'rate_limited':
    case 'audit_unavailable':
    case 'internal':
      return retrying;
    default:
      // unauthenticated (the login expired: broker login) and the like carry their own remedy.
      return err.hint ?? retrying;
  }
}
