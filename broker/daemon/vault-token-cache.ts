import type { RenewedVaultToken, RenewVaultTokenOptions } from '../client/vault-renew.js';
import { BrokerError, isBrokerError } from '../errors.js';
import type { Logger } from '../log.js';
import type { SessionView, VaultTokenGrant } from '../wire/service-api.js';
import type { VaultTokenStatus } from './protocol.js';
import { SingleFlight } from './single-flight.js';
import { EXPIRY_SAFETY_MS } from './refresh-policy.js';
import { changedWhileWaiting, noActiveSession, sessionEnded, sessionGone, Superseded, TaskCache, type TaskCacheOptions, type TaskEntry } from './task-cache.js';

/**
 * Task Vault tokens held in the daemon's memory, one per task template. Unlike AWS credentials they
 * are renewed *in place* (`auth/token/renew-self`), because an agent started by `broker exec` holds
 * the token in its environment and cannot be handed a new one; a fresh token is fetched from the
 * service only when renewal cannot extend the one held (not renewable, use-limited, past its max).
 * Renewal starts when a third of the token's TTL remains. During an outage the held token is served
 * until it expires, while the daemon retries with back-off.
 */

export interface VaultUpstream {
  findSession(template: string): Promise<SessionView | undefined>;
  /** A fresh token under the session (`POST /v1/sessions/:id/vault-token`, audited by the service). */
  freshToken(sessionId: string): Promise<{ session: SessionView; vault: VaultTokenGrant }>;
  renew(o: RenewVaultTokenOptions): Promise<RenewedVaultToken>;
}

interface Held {
  grant: VaultTokenGrant;
  /** The template's TTL, as first granted: each renewal asks for this much again, no more. */
  baseTtlSeconds: number;
  /** When the TTL started (issue or last renewal) and when it ends, ms. */
  since: number;
  expiresAt: number;
}

interface Entry extends TaskEntry {
  sessionEndsAt: number;
  held?: Held;
  inflight?: Promise<Held>;
}


/** A renewal that adds less than this is not worth keeping the token: fetch a fresh one. */
const MIN_USEFUL_TTL_MS = 60_000;

export class VaultTokenCache extends TaskCache<Entry> {
  private readonly discovering = new SingleFlight<string, { grant: VaultTokenGrant; session: SessionView }>();

  constructor(private readonly opts: TaskCacheOptions & { upstream: VaultUpstream; log: Pick<Logger, 'info' | 'warn'> }) {
    super(opts);
  }

  /** The task's token: the held one while it is valid (renewing it in the background when due). */
  get(template: string): Promise<{ grant: VaultTokenGrant; session: SessionView }> {
    return this.lookup(template, true);
  }

  private async lookup(template: string, mayRetry: boolean): Promise<{ grant: VaultTokenGrant; session: SessionView }> {
    const e = this.entries.get(template);
    const now = this.now();
    if (e && now >= e.sessionEndsAt) {
      this.drop(template);
      throw sessionEnded(template, e.sessionEndsAt);
    }
    if (!e) this.refuseWithdrawn(template);
    if (e?.held && e.held.expiresAt - now > EXPIRY_SAFETY_MS) {
      this.maybeRefresh(e);
      return { grant: e.held.grant, session: e.session };
    }
    // Expired while Vault or the service is down, and the next attempt is not due: the back-off holds
    // for callers too. Fail fast.
    if (e?.held && e.lastError && !e.inflight && now < e.retryAt) throw noneLeft(template, e.lastError);
    try {
      if (!e) return await this.discover(template);
      const held = await this.refresh(e);
      return { grant: held.grant, session: e.session };
    } catch (err) {
      if (err instanceof Superseded) {
        // Replaced (a new task start, another agent) or dropped (`broker end`) meanwhile: ask again.
        if (mayRetry) return this.lookup(template, false);
        throw changedWhileWaiting(template);
      }
      if (!e) throw err;
      throw noneLeft(template, err);
    }
  }

  /** A token the service just issued with a new session. */
  put(session: SessionView, grant: VaultTokenGrant): void {
    this.drop(session.template);
    this.forgetWithdrawn(session.template);
    const e: Entry = { template: session.template, session, sessionEndsAt: Date.parse(session.expiresAt), failures: 0, retryAt: 0 };
    e.held = this.hold(grant);
    this.entries.set(session.template, e);
  }

  protected override forget(e: Entry): void {
    delete e.held;
  }

  status(): VaultTokenStatus[] {
    return [...this.entries.values()].map((e) => ({
      template: e.template,
      accessor: e.held?.grant.accessor ?? null,
      expiresAt: e.held ? new Date(e.held.expiresAt).toISOString() : null,
      lastError: e.lastError?.message ?? null,
    }));
  }

  override tick(): void {
    const now = this.now();
    for (const e of [...this.entries.values()]) {
      if (now >= e.sessionEndsAt) this.dropEntry(e);
      else this.maybeRefresh(e);
    }
  }

  private hold(grant: VaultTokenGrant): Held {
    return { grant, baseTtlSeconds: grant.ttlSeconds, since: this.now(), expiresAt: Date.parse(grant.expiresAt) };
  }

  private discover(template: string): Promise<{ grant: VaultTokenGrant; session: SessionView }> {
    return this.discovering.run(template, async () => {
      const session = await this.opts.upstream.findSession(template);
      this.settleWithdrawn(template, session);
      if (!session) throw noActiveSession(template);
      if (!session.vault) {
        throw new BrokerError('conflict', `task template "${template}" grants no Vault token`, { hint: 'its credentials are AWS ones: use AWS_PROFILE=broker-<template> or broker exec' });
      }
      const e: Entry = { template, session, sessionEndsAt: Date.parse(session.expiresAt), failures: 0, retryAt: 0 };
      this.entries.set(template, e);
      try {
        const held = await this.refresh(e);
        return { grant: held.grant, session: e.session };
      } catch (err) {
        this.dropEntry(e);
        throw err;
      }
    });
  }


  /** Due when a third of the TTL remains (or, after a failure, when the back-off says). */
  private dueAt(e: Entry): number {
    if (!e.held) return 0;
    if (e.lastError) return e.retryAt;
    return e.held.expiresAt - (e.held.expiresAt - e.held.since) / 3;
  }

  private maybeRefresh(e: Entry): void {
    if (e.inflight || !e.held) return;
    // A token already valid to the session's end needs nothing more.
    if (e.held.expiresAt >= e.sessionEndsAt) return;
    if (this.now() >= this.dueAt(e)) this.refresh(e).catch(() => { /* kept on the entry, logged on change */ });
  }

  /** Renew the held token if that extends it usefully; otherwise (or on failure) fetch a fresh one. */
  private refresh(e: Entry): Promise<Held> {
    e.inflight ??= (async () => {
      let held: Held;
      try {
        held = (await this.tryRenew(e)) ?? (await this.fetchFresh(e));
      } catch (err) {
        const error = isBrokerError(err) ? err : new BrokerError('internal', (err as Error)?.message ?? String(err), { cause: err });
        // Only the entry still held is marked failed or dropped: a replaced one is history.
        if (!this.holds(e)) throw new Superseded();
        if (sessionGone(error)) {
          this.withdraw(e.template, e.session.id, error);
        } else {
          if (!e.lastError) {
            this.opts.log.warn({ template: e.template, code: error.code, reason: error.message }, 'cannot renew the Vault token; serving the held one until it expires and retrying with back-off');
          }
          this.backOff(e, error);
        }
        throw error;
      }
      if (!this.holds(e)) throw new Superseded();
      e.held = held;
      if (e.lastError) this.opts.log.info({ template: e.template, accessor: held.grant.accessor }, 'Vault token renewed again after failures');
      this.resetBackOff(e);
      return held;
    })().finally(() => { delete e.inflight; });
    return e.inflight;
  }

  private async tryRenew(e: Entry): Promise<Held | undefined> {
    const h = e.held;
    if (!h) return undefined;
    const g = h.grant;
    const notAfter = Math.min(e.sessionEndsAt, Date.parse(g.maxExpiresAt));
    // Every request with a use-limited token spends a use: renewing would eat the agent's uses.
    if (!g.renewable || g.numUses > 0 || notAfter - this.now() < MIN_USEFUL_TTL_MS) return undefined;
    try {
      // The template's TTL again, not the rest of the session: a token the daemon stops renewing
      // (laptop offline, daemon stopped) then dies as soon as the template says.
      const r = await this.opts.upstream.renew({ address: g.address, namespace: g.namespace, token: g.token, notAfter: new Date(notAfter), incrementSeconds: h.baseTtlSeconds });
      // Capped (by the token's or role's max TTL): keeping it would mean renewing again at once.
      if (r.expiresAt.getTime() - h.expiresAt < Math.min(MIN_USEFUL_TTL_MS, (h.baseTtlSeconds * 1000) / 10)) return undefined;
      return {
        grant: { ...g, ttlSeconds: r.ttlSeconds, expiresAt: r.expiresAt.toISOString(), renewable: r.renewable },
        baseTtlSeconds: h.baseTtlSeconds, since: this.now(), expiresAt: r.expiresAt.getTime(),
      };
    } catch {
      // Revoked, expired or capped by Vault: a fresh token is the way on.
      return undefined;
    }
  }

  private async fetchFresh(e: Entry): Promise<Held> {
    const r = await this.opts.upstream.freshToken(e.session.id);
    e.session = r.session;
    e.sessionEndsAt = Date.parse(r.session.expiresAt);
    return this.hold(r.vault);
  }
}

function noneLeft(template: string, err: unknown): unknown {
  if (!isBrokerError(err)) return err;
  if (err.code === 'not_found' || err.code === 'conflict' || err.code === 'not_logged_in' || err.code === 'frozen') return err;
  return new BrokerError(err.code, `no valid Vault token for "${template}": ${err.message}`, {
    cause: err, hint: err.hint ?? 'the daemon keeps retrying; check the broker service and Vault with: broker status',
  });
}
