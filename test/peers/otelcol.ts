import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from './paths.js';

/** Built by scripts/setup.sh from test/peers/otelcol/builder.yaml (the OTLP receiver + the contrib file exporter). */
export const OTELCOL_BIN = join(REPO_ROOT, '.peers', 'otelcol', 'build', 'otelcol-broker-test');

export interface Collector {
  /** The OTLP/HTTP logs endpoint, e.g. http://127.0.0.1:4318/v1/logs. */
  logsUrl: string;
  port: number;
  /** Where the file exporter writes: one OTLP JSON export request per line. */
  outFile: string;
  /** Every log record received so far, flattened out of the export requests. */
  records(): ReceivedLog[];
  log(): string;
  stop(): Promise<void>;
}

/** One OTLP log record as the file exporter wrote it (OTLP JSON: attributes as key/value lists). */
export interface ReceivedLog {
  timeUnixNano: string;
  severityNumber?: number;
  severityText?: string;
  eventName?: string;
  body: unknown;
  attributes: Record<string, unknown>;
  resource: Record<string, unknown>;
}

const running = new Set<ChildProcess>();
process.on('exit', () => { for (const c of running) c.kill('SIGKILL'); });

/**
 * Starts the real OpenTelemetry Collector with an OTLP/HTTP receiver on 127.0.0.1:`port` and a
 * file exporter, and waits until it accepts an export. `port` must be free (a test that starts the
 * collector later on an address the broker already sends to picks one with freePort()).
 */
export async function startCollector(opts: { port: number; outFile?: string }): Promise<Collector> {
  if (!existsSync(OTELCOL_BIN)) throw new Error(`no OpenTelemetry Collector at ${OTELCOL_BIN}: run scripts/setup.sh (it builds one with Go)`);
  const dir = mkdtempSync(join(tmpdir(), 'otelcol-'));
  const outFile = opts.outFile ?? join(dir, 'logs.jsonl');
  const config = join(dir, 'config.yaml');
  writeFileSync(config, `receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:${opts.port}
exporters:
  file:
    path: ${JSON.stringify(outFile)}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    logs:
      receivers: [otlp]
      exporters: [file]
`);
  const logFile = join(dir, 'collector.log');
  let output = '';
  const usePdeath = process.platform === 'linux' && existsSync('/usr/bin/setpriv');
  const argv = [OTELCOL_BIN, '--config', `file:${config}`];
  const child = spawn(usePdeath ? '/usr/bin/setpriv' : argv[0]!, usePdeath ? ['--pdeathsig', 'KILL', '--', ...argv] : argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  const onData = (d: Buffer) => { output += d.toString(); };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<void>((r) => child.once('exit', () => { running.delete(child); writeFileSync(logFile, output); r(); }));
  const logsUrl = `http://127.0.0.1:${opts.port}/v1/logs`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the collector exited before it started:\n${output}`);
    try {
      const r = await fetch(logsUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"resourceLogs":[]}' });
      if (r.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) { await stop(); throw new Error(`the collector did not accept OTLP within 30 s:\n${output}`); }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    logsUrl, port: opts.port, outFile,
    records: () => readRecords(outFile),
    log: () => output,
    stop,
  };
}

/** The log records in a file exporter's output (OTLP JSON, one ExportLogsServiceRequest a line). */
export function readRecords(file: string): ReceivedLog[] {
  if (!existsSync(file)) return [];
  const out: ReceivedLog[] = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    let req: any;
    try { req = JSON.parse(line); } catch { continue; } // a line still being written
    for (const rl of req.resourceLogs ?? []) {
      const resource = kv(rl.resource?.attributes);
      for (const sl of rl.scopeLogs ?? []) {
        for (const lr of sl.logRecords ?? []) {
          out.push({
            timeUnixNano: lr.timeUnixNano, severityNumber: lr.severityNumber, severityText: lr.severityText, eventName: lr.eventName,
            body: anyValue(lr.body), attributes: kv(lr.attributes), resource,
          });
        }
      }
    }
  }
  return out;
}

/** OTLP JSON AnyValue → a plain value (int64 arrives as a string: https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding). */
function anyValue(v: any): unknown {
  if (v === undefined || v === null) return undefined;
  if ('stringValue' in v) return v.stringValue;
  if ('intValue' in v) return Number(v.intValue);
  if ('doubleValue' in v) return v.doubleValue;
  if ('boolValue' in v) return v.boolValue;
  if ('arrayValue' in v) return (v.arrayValue.values ?? []).map(anyValue);
  if ('kvlistValue' in v) return kv(v.kvlistValue.values);
  return undefined;
}

function kv(list: any[] | undefined): Record<string, unknown> {
  return Object.fromEntries((list ?? []).map((a: any) => [a.key, anyValue(a.value)]));
}
