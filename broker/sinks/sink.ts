/**
 * An audit sink: somewhere audit records are copied to, off the store (README "Export to a SIEM").
 * The feeder (audit-sinks.ts) hands it records in `seq` order from its cursor; `deliver` resolves
 * only once the destination has taken them all (written and synced, or acknowledged), and rejects
 * otherwise: then the same records, and maybe more, come again. A sink must therefore accept
 * records it has already seen (receivers deduplicate by `seq`).
 */
import type { AuditRecord } from '../store/audit-event.js';

export type SinkType = 'jsonl' | 'stdout' | 'otlp';

export interface AuditSink {
  readonly id: string;
  readonly type: SinkType;
  deliver(records: readonly AuditRecord[]): Promise<void>;
  /**
   * Makes what was delivered durable (a file's fdatasync). Called before the cursor is written to
   * the store, so a cursor on disk never runs ahead of what survives a power cut; absent when
   * delivering already is (OTLP: the receiver answered).
   */
  sync?(): Promise<void>;
  close(): Promise<void>;
}

/** One audit record as one JSON line: exactly the stored record, `seq` and `hash` included. */
export function jsonLine(r: AuditRecord): string {
  return `${JSON.stringify(r)}\n`;
}
