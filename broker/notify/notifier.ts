/**
 * Webhook notifications of start requests. Delivery never blocks the request that caused it:
 * `notify` enqueues and returns; a background loop posts, retrying with exponential back-off and
 * full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"). Redirects are not followed
 * (a 3xx is a failure): a receiver cannot bounce the payload somewhere else. The webhook URL is a
 * credential of its own (a Slack incoming-webhook URL is), so logs name its host only.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { NotificationsConfig } from '../config/server-config.js';
import type { StartRequestView } from '../wire/service-api.js';
import type { Logger } from '../log.js';

export type NotifyEvent = 'request.created' | 'request.decided' | 'request.expired' | 'break_glass';
export interface NotifyExtra { by?: string; decision?: string; reason?: string }

export interface Notifier {
  /** Enqueue a notification; returns at once, never throws. */
  notify(event: NotifyEvent, request: StartRequestView, extra?: NotifyExtra): void;
  /** Stop taking new ones and wait at most `timeoutMs` for the queue to drain. */
  close(timeoutMs?: number): Promise<void>;
}

export interface NotifierTiming {
  baseDelayMs?: number;
  maxTries?: number;
  tryTimeoutMs?: number;
  maxQueue?: number;
}

type Webhook = NotificationsConfig['webhooks'][number];
interface Job { hook: Webhook; body: string; event: NotifyEvent; requestId: string }

const noop: Notifier = { notify() { /* none configured */ }, async close() { /* nothing queued */ } };

export function genericPayload(event: NotifyEvent, request: StartRequestView, extra: NotifyExtra, at: string) {
  // The view holds no secret (no token, no code, no credential); nothing else is added but `extra`.
  return { event, at, request, ...(extra.by !== undefined && { by: extra.by }), ...(extra.decision !== undefined && { decision: extra.decision }), ...(extra.reason !== undefined && { reason: extra.reason }) };
}

/**
 * Slack's "Escaping text" (docs.slack.dev, "Formatting message text"): `&`, `<` and `>` are control
 * characters of its markup, so text a requester typed (reason, parameters, agent) cannot become a
 * `<!channel>` mention or a `<https://…|link>` to somewhere else.
 */
export function slackEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

const DID: Record<string, string> = { confirm: 'confirmed', approve: 'approved', deny: 'denied', started: 'started' };

/**
 * Slack's incoming-webhook body (`{text}`). It only links to the request page: a decision is never
 * taken in chat, because it needs a fresh login at the IdP (its MFA, max_age) by the person deciding,
 * which a chat button cannot prove.
 */
export function slackPayload(event: NotifyEvent, r: StartRequestView, extra: NotifyExtra) {
  const params = Object.entries(r.params).map(([k, v]) => `${k}=${v}`).join(', ');
  const what = `${r.template}${params ? ` (${params})` : ''}`;
  const decided = extra.decision === undefined ? 'decided on' : DID[extra.decision] ?? extra.decision;
  const head = {
    'request.created': `${r.requester} asks to start ${what} (agent ${r.agent})`,
    'request.decided': `${extra.by ?? 'someone'} ${decided} ${r.requester}'s request to start ${what}`,
    'request.expired': `${r.requester}'s request to start ${what} expired`,
    break_glass: `BREAK-GLASS: ${r.requester} starts ${what} without approvers (agent ${r.agent})`,
  }[event];
  const reason = extra.reason || r.reason;
  // The URL is the service's own; everything before it is escaped.
  return { text: `${slackEscape(`${head} — ${reason || '(no reason given)'} [status: ${r.status}]`)}: ${r.url}` };
}

/** What StartRequests tells (its RequestEvents, matched by shape), as notifications. */
export function requestEventsOf(n: Notifier) {
  const latest = (v: StartRequestView): NotifyExtra => {
    const d = v.decisions.at(-1);
    return d ? { by: d.by, ...(d.reason ? { reason: d.reason } : {}) } : {};
  };
  return {
    onCreated: (v: StartRequestView) => n.notify('request.created', v),
    onDecided: (v: StartRequestView, decision: string) => n.notify('request.decided', v, decision === 'started'
      ? { by: v.requester, decision }
      : { ...latest(v), decision }),
    onExpired: (v: StartRequestView) => n.notify('request.expired', v),
    onBreakGlass: (v: StartRequestView) => n.notify('break_glass', v),
  };
}

function headerValues(hook: Webhook, baseDir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, src] of Object.entries(hook.headers)) {
    const v = 'env' in src ? process.env[src.env] : readFileSync(resolve(baseDir, src.file), 'utf8').trim();
    if (v) out[name] = v;
  }
  return out;
}

export function createNotifier(config: NotificationsConfig | undefined, logger: Logger, options: NotifierTiming & { baseDir?: string } = {}): Notifier {
  const hooks = config?.webhooks ?? [];
  if (hooks.length === 0) return noop;
  const base = options.baseDelayMs ?? 1000;
  const maxTries = options.maxTries ?? 5;
  const tryTimeout = options.tryTimeoutMs ?? 5000;
  const maxQueue = options.maxQueue ?? 1000;
  const baseDir = options.baseDir ?? process.cwd();
  const queue: Job[] = [];
  const log = logger.child({ component: 'notify' });
  let closed = false;
  let running: Promise<void> | undefined;
  let wake: (() => void) | undefined;
  const stop = new AbortController();

  const sleep = (ms: number) => new Promise<void>((res) => {
    const t = setTimeout(res, ms);
    stop.signal.addEventListener('abort', () => { clearTimeout(t); res(); }, { once: true });
  });

  async function deliver(job: Job): Promise<void> {
    const host = new URL(job.hook.url).host;
    for (let n = 1; n <= maxTries; n++) {
      let kind: string;
      try {
        const res = await fetch(job.hook.url, {
          method: 'POST',
          headers: { ...headerValues(job.hook, baseDir), 'content-type': 'application/json' },
          body: job.body,
          redirect: 'manual',
          signal: AbortSignal.any([AbortSignal.timeout(tryTimeout), stop.signal]),
        });
        await res.body?.cancel();
        if (res.status >= 200 && res.status < 300) return;
        kind = `status ${res.status}`;
      } catch (e) {
        const err = e as Error & { cause?: { code?: string } };
        kind = err.name === 'TimeoutError' ? 'timeout' : err.cause?.code ?? err.name;
      }
      log.warn({ host, event: job.event, request: job.requestId, try: n, of: maxTries, failure: kind }, `webhook to ${host} failed (${kind}), try ${n} of ${maxTries}`);
      if (n === maxTries || stop.signal.aborted) break;
      // Full jitter: a random wait in [0, base·2^(n-1)].
      await sleep(Math.random() * base * 2 ** (n - 1));
    }
    log.info({ host, event: job.event, request: job.requestId }, `webhook to ${host} given up`);
  }

  async function loop(): Promise<void> {
    for (;;) {
      if (stop.signal.aborted) return;
      const job = queue.shift();
      if (job) { await deliver(job); continue; }
      if (closed) return;
      await new Promise<void>((res) => { wake = res; });
      wake = undefined;
    }
  }

  return {
    notify(event, request, extra = {}) {
      if (closed) return;
      try {
        const at = new Date().toISOString();
        for (const hook of hooks) {
          if (!hook.events.includes(event)) continue;
          const payload = hook.format === 'slack' ? slackPayload(event, request, extra) : genericPayload(event, request, extra, at);
          if (queue.length >= maxQueue) {
            const dropped = queue.shift()!;
            log.warn({ event: dropped.event, request: dropped.requestId, host: new URL(dropped.hook.url).host }, `notification queue full (${maxQueue}): dropped the oldest`);
          }
          queue.push({ hook, body: JSON.stringify(payload), event, requestId: request.id });
        }
        running ??= loop();
        wake?.();
      } catch (e) {
        log.warn({ event, failure: (e as Error).name }, 'notification not queued');
      }
    },
    async close(timeoutMs = 5000) {
      closed = true;
      wake?.();
      if (!running) return;
      const t = setTimeout(() => stop.abort(), timeoutMs);
      await running;
      clearTimeout(t);
      if (queue.length) log.info({ left: queue.length }, `notifications not delivered at stop: ${queue.length}`);
      queue.length = 0;
    },
  };
}
