/**
 * The service's metrics in the Prometheus text exposition format (prom-client), one `Registry` per
 * service instance: several services in one process (the tests) never share a counter.
 *
 * Names follow the Prometheus naming conventions (https://prometheus.io/docs/practices/naming/):
 * a `broker_` prefix, the base unit in the name (`_seconds`, `_records`), `_total` on counters.
 * Every label takes its values from a closed set — template names (bounded by the catalog: only a
 * template that exists can issue anything), audit event names, error codes, operation names — and
 * never from a request: no developer, email, session id, access key id or free text, so the number
 * of series stays bounded whatever clients send (https://prometheus.io/docs/practices/instrumentation/#do-not-overuse-labels).
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ErrorCode } from '../errors.js';
import type { AuditEventName } from '../store/audit-event.js';

/** The issue events of the audit log, the `event` label of `broker_issuances_total`. */
export type IssueEvent = Extract<AuditEventName, 'credentials.issue' | 'credentials.reissue' | 'vault.issue' | 'vault.reissue'>;

/**
 * `issued`: handed out (its audit record committed); `failed`: STS or Vault refused or did not
 * answer; `withheld`: issued upstream but not handed out, because its audit record could not be
 * committed (fail closed) or the session ended meanwhile.
 */
export type IssueOutcome = 'issued' | 'failed' | 'withheld';

/** Which limit refused a request. */
export type RateLimitName =
  /** `limits.issuePerMinute`, per developer. */
  | 'issue_per_minute'
  /** `limits.auth.perAddress` / `limits.auth.global`: the buckets of `/v1/auth/*`. */
  | 'auth_per_address'
  | 'auth_global'
  /** A template's `limits` (concurrentSessions, startsPerDay, startsPerDeveloperPerDay). */
  | 'template_concurrent_sessions'
  | 'template_starts_per_day'
  | 'template_starts_per_developer_per_day';

export type UpstreamService = 'sts' | 'iam' | 'vault';

/** A sink's records not delivered yet (audit sinks read the store by a cursor). */
export interface SinkBacklog {
  id: string;
  backlog: number;
}

/**
 * What the domain and the thin clients report; the service's ServiceMetrics implements it, and
 * NO_METRICS (below) does nothing, for the parts built without a service (unit tests, the CLI).
 */
export interface BrokerMetrics {
  issuance(event: IssueEvent, template: string, outcome: IssueOutcome): void;
  /** An audited refusal; `reason` is the refusal's error code (a closed set), never its message. */
  denial(event: AuditEventName, reason: ErrorCode): void;
  rateLimited(limit: RateLimitName): void;
  /** One call to STS, IAM or Vault, the SDK's retries included; `operation` from the client's closed set. */
  upstream(service: UpstreamService, operation: string, ok: boolean, seconds: number): void;
  /** One store transaction that appended an audit record (the decision and its record together). */
  auditWrite(ok: boolean, seconds: number): void;
}

export const NO_METRICS: BrokerMetrics = {
  issuance() {}, denial() {}, rateLimited() {}, upstream() {}, auditWrite() {},
};

export interface ServiceMetricsOptions {
  /** Open task sessions not past their end, read at scrape time (a COUNT, no rows). */
  activeSessions: () => number | Promise<number>;
  /** Start requests waiting for their humans, read at scrape time. */
  pendingStartRequests: () => number | Promise<number>;
  /**
   * The backlog of each audit sink, read at scrape time. None yet in this build: the service
   * passes nothing and the gauge has no series until sinks exist to report it.
   */
  sinkBacklog?: (() => SinkBacklog[]) | undefined;
  /** Node's process metrics (`process_*`, `nodejs_*`; prom-client's default metrics). */
  processMetrics?: boolean | undefined;
}

/** Seconds, for calls across the network: STS's bound is 8 s by default, IAM's 15 s (aws/role-revocations.ts). */
const UPSTREAM_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15];
/** Seconds, for a local SQLite transaction with a synchronous fsync (store/sqlite/database.ts). */
const AUDIT_WRITE_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export class ServiceMetrics implements BrokerMetrics {
  readonly registry = new Registry();
  private readonly issuances: Counter<'template' | 'event' | 'decision'>;
  private readonly denials: Counter<'event' | 'reason'>;
  private readonly refusals: Counter<'limit'>;
  private readonly calls: Record<UpstreamService, Histogram<'operation' | 'outcome'>>;
  private readonly auditWrites: Histogram<'outcome'>;

  constructor(options: ServiceMetricsOptions) {
    const registers = [this.registry];
    this.issuances = new Counter({
      name: 'broker_issuances_total', registers, labelNames: ['template', 'event', 'decision'],
      help: 'Credentials (AWS) and tokens (Vault) issued under task sessions, by template, audit event and outcome (issued, failed, withheld).',
    });
    this.denials = new Counter({
      name: 'broker_denials_total', registers, labelNames: ['event', 'reason'],
      help: 'Audited refusals, by audit event and reason (the error code of the refusal).',
    });
    this.refusals = new Counter({
      name: 'broker_rate_limit_refusals_total', registers, labelNames: ['limit'],
      help: 'Requests refused by a rate limit or a template limit, by limit.',
    });
    const upstream = (service: UpstreamService, what: string) => new Histogram({
      name: `broker_${service}_request_duration_seconds`, registers, labelNames: ['operation', 'outcome'], buckets: UPSTREAM_BUCKETS,
      help: `Duration of ${what} calls made by the service (retries included), by operation and outcome (ok, error).`,
    });
    this.calls = { sts: upstream('sts', 'AWS STS'), iam: upstream('iam', 'AWS IAM'), vault: upstream('vault', 'Vault/OpenBao') };
    this.auditWrites = new Histogram({
      name: 'broker_audit_write_duration_seconds', registers, labelNames: ['outcome'], buckets: AUDIT_WRITE_BUCKETS,
      help: 'Duration of store transactions that record a decision with its audit record, by outcome (committed, failed).',
    });
    new Gauge({
      name: 'broker_active_sessions', registers, help: 'Task sessions open and not past their end (read from the store at scrape time).',
      async collect() { this.set(await options.activeSessions()); },
    });
    new Gauge({
      name: 'broker_pending_start_requests', registers, help: 'Start requests waiting for confirmation or approval (read from the store at scrape time).',
      async collect() { this.set(await options.pendingStartRequests()); },
    });
    const sinkBacklog = options.sinkBacklog;
    new Gauge({
      name: 'broker_audit_sink_backlog_records', registers, labelNames: ['sink'],
      help: 'Audit records not yet delivered to each audit sink (read at scrape time).',
      collect() {
        this.reset();
        for (const s of sinkBacklog?.() ?? []) this.set({ sink: s.id }, s.backlog);
      },
    });
    if (options.processMetrics) collectDefaultMetrics({ register: this.registry });
  }

  issuance(event: IssueEvent, template: string, outcome: IssueOutcome): void {
    this.issuances.inc({ template, event, decision: outcome });
  }

  denial(event: AuditEventName, reason: ErrorCode): void {
    this.denials.inc({ event, reason });
  }

  rateLimited(limit: RateLimitName): void {
    this.refusals.inc({ limit });
  }

  upstream(service: UpstreamService, operation: string, ok: boolean, seconds: number): void {
    this.calls[service].observe({ operation, outcome: ok ? 'ok' : 'error' }, seconds);
  }

  auditWrite(ok: boolean, seconds: number): void {
    this.auditWrites.observe({ outcome: ok ? 'committed' : 'failed' }, seconds);
  }

  /** The exposition: what `GET /metrics` answers, with its content type. */
  async exposition(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/** Runs `fn`, reporting its duration in seconds and whether it resolved. */
export async function timed<T>(fn: () => Promise<T>, report: (ok: boolean, seconds: number) => void): Promise<T> {
  const start = performance.now();
  try {
    const r = await fn();
    report(true, (performance.now() - start) / 1000);
    return r;
  } catch (e) {
    report(false, (performance.now() - start) / 1000);
    throw e;
  }
}
