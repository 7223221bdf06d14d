import { SeverityNumber, type AnyValue, type Attributes } from '@opentelemetry/api';
import { OTLPLogExporter } from '@opentelemetry/exporter-logs-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import type { ReadableLogRecord } from '@opentelemetry/sdk-logs';
import { ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';
import type { AuditDecision, AuditRecord } from '../store/audit-event.js';
import type { AuditSink } from './sink.js';

/** The `service.name` resource attribute of every exported record. */
export const OTLP_SERVICE_NAME = 'agent-credential-broker';
const SCOPE = { name: 'agent-credential-broker/audit' };
const RESOURCE = resourceFromAttributes({ [ATTR_SERVICE_NAME]: OTLP_SERVICE_NAME });

/**
 * Attribute names. The semantic conventions registry has one for the person
 * (https://opentelemetry.io/docs/specs/semconv/registry/attributes/user/: `user.id`, "unique
 * identifier of the user"; `enduser.id` is deprecated there, moved to the client-side
 * conventions); for everything else there is none, so they sit under `broker.`. The record's
 * `seq` is an attribute so a receiver can deduplicate (delivery is at least once).
 */
export const OTLP_ATTRIBUTES = {
  seq: 'broker.audit.seq',
  hash: 'broker.audit.hash',
  decision: 'broker.audit.decision',
  developer: 'user.id',
  template: 'broker.template',
  sessionId: 'broker.session.id',
  reason: 'broker.reason',
  accessKeyId: 'broker.aws.access_key_id',
  roleSessionName: 'broker.aws.role_session_name',
  expiration: 'broker.credentials.expiration',
  vaultAccessor: 'broker.vault.accessor',
} as const satisfies Partial<Record<keyof AuditRecord, string>>;

/** Refusals are warnings and failures errors (log data model, "Field: SeverityNumber"); the rest informational. */
function severity(d: AuditDecision): { severityNumber: SeverityNumber; severityText: string } {
  if (d === 'denied') return { severityNumber: SeverityNumber.WARN, severityText: 'WARN' };
  if (d === 'failed') return { severityNumber: SeverityNumber.ERROR, severityText: 'ERROR' };
  return { severityNumber: SeverityNumber.INFO, severityText: 'INFO' };
}

/**
 * One audit record in the OpenTelemetry log data model
 * (https://opentelemetry.io/docs/specs/otel/logs/data-model/): Timestamp is when the broker
 * recorded it, EventName the audit event, Body the whole record as a map (exactly what the JSON
 * lines sink writes), Attributes the fields a SIEM filters on.
 */
export function toLogRecord(r: AuditRecord, observedMs: number): ReadableLogRecord {
  const attributes: Attributes = {};
  for (const [field, name] of Object.entries(OTLP_ATTRIBUTES)) {
    const v = r[field as keyof typeof OTLP_ATTRIBUTES];
    if (v !== undefined) attributes[name] = v;
  }
  return {
    hrTime: hrTime(Date.parse(r.at)),
    hrTimeObserved: hrTime(observedMs),
    eventName: r.event,
    ...severity(r.decision),
    // Through JSON: no undefined members, and detail's values as the record holds them.
    body: JSON.parse(JSON.stringify(r)) as AnyValue,
    attributes,
    droppedAttributesCount: 0,
    resource: RESOURCE,
    instrumentationScope: SCOPE,
  };
}

function hrTime(ms: number): [number, number] {
  const s = Math.floor(ms / 1000);
  return [s, Math.round((ms - s * 1000) * 1e6)];
}

/**
 * OTLP logs over HTTP (JSON encoding) with the OpenTelemetry JS exporter, one export per batch:
 * the batch is delivered when the receiver answered success, within `timeoutMs` (the exporter's
 * own retries of retryable answers included).
 */
export class OtlpSink implements AuditSink {
  readonly type = 'otlp' as const;
  private readonly exporter: OTLPLogExporter;
  private readonly now: () => number;

  constructor(readonly id: string, opts: { endpoint: string; headers: Record<string, string>; timeoutMs: number; now?: () => number }) {
    this.exporter = new OTLPLogExporter({ url: opts.endpoint, headers: opts.headers, timeoutMillis: opts.timeoutMs, concurrencyLimit: 1 });
    this.now = opts.now ?? Date.now;
  }

  deliver(records: readonly AuditRecord[]): Promise<void> {
    const observed = this.now();
    const logs = records.map((r) => toLogRecord(r, observed));
    return new Promise((resolve, reject) => {
      this.exporter.export(logs, (result) => {
        // ExportResultCode.SUCCESS is 0 (@opentelemetry/core).
        if (result.code === 0) resolve();
        else reject(result.error ?? new Error('the OTLP receiver did not accept the records'));
      });
    });
  }

  async close(): Promise<void> {
    await this.exporter.shutdown().catch(() => undefined);
  }
}
