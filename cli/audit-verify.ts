import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { JWK } from 'jose';
import { chainRowOf } from '../broker/audit/principal-chain.js';
import { BrokerApi } from '../broker/client/api.js';
import { loadServerConfig } from '../broker/config/server-config.js';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { BrokerError, EXIT_NO } from '../broker/errors.js';
import { loadSigningKeys } from '../broker/identity/broker-tokens.js';
import { AuditKeySet, parseCheckpointLines, verifyAuditLog, type VerifyReport } from '../broker/store/audit-verify.js';
import { SqliteAuditReader } from '../broker/store/sqlite/audit-chain-source.js';
import { parallelWalker } from '../broker/store/sqlite/audit-parallel.js';
import { DownloadedChain } from '../broker/store/sqlite/downloaded-chain.js';
import { auditJwksResponse, MAX_AUDIT_PAGE, type AdminAuditResponse } from '../broker/wire/service-api.js';
import { action, out, printJson } from './output.js';

interface Opts { db?: string; config?: string; server?: boolean; checkpoints?: string; keys?: string; json?: boolean }

function readText(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new BrokerError('not_found', `cannot read ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/**
 * `-`: stdin read as a stream, to its end: readFileSync(0) stops with EAGAIN on a non-blocking pipe
 * whose writer has not written everything yet (a large sink export piped in).
 */
async function readInput(file: string, what: string): Promise<string> {
  if (file !== '-') return readText(file, what);
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** A JWKS (`{"keys": […]}`), one JWK, an array of them, or JSON lines of JWKs; private parts are dropped. */
function parseKeys(text: string, file: string): JWK[] {
  const one = (v: unknown): JWK[] => {
    if (Array.isArray(v)) return v as JWK[];
    if (v && typeof v === 'object' && Array.isArray((v as { keys?: unknown }).keys)) return (v as { keys: JWK[] }).keys;
    if (v && typeof v === 'object') return [v as JWK];
    throw new Error('not a key');
  };
  try { return one(JSON.parse(text)); } catch { /* JSON lines? */ }
  try {
    return text.split('\n').filter((l) => l.trim()).flatMap((l) => one(JSON.parse(l)));
  } catch {
    throw new BrokerError('invalid_request', `${file}: not a JWKS, a JWK or JSON lines of JWKs`, {
      hint: 'save the service\'s /.well-known/audit-jwks.json (keep retired keys in it too)',
    });
  }
}

/** The audit keys and where they came from: the report says which, since it changes what a pass proves. */
interface Keys { set: AuditKeySet; source: 'file' | 'service'; from: string }

/**
 * `--server`: every record downloaded as stored (`GET /v1/admin/audit?view=chain`, paged, through the
 * daemon with the admin's login, like `broker audit show`), then the same verifier as `--db`, here.
 */
async function verifyServer(opts: Opts, offHost: ReturnType<typeof parseCheckpointLines>): Promise<{ report: VerifyReport; server: string; keys: Keys; store: AdminAuditResponse['store'] }> {
  // A bad keys file fails before the download, not after it.
  const held = opts.keys ? await AuditKeySet.of(parseKeys(readText(opts.keys, 'keys file'), opts.keys), opts.keys) : undefined;
  const chain = new DownloadedChain();
  try {
    let after: number | undefined;
    let store: AdminAuditResponse['store'];
    for (;;) {
      const page = await callDaemon({ op: 'admin-audit', query: { view: 'chain', limit: String(MAX_AUDIT_PAGE), ...(after === undefined ? {} : { after: String(after) }) } });
      if (!page.chain) {
        throw new BrokerError('upstream_error', 'the service does not serve the audit chain (view=chain)', { hint: 'upgrade the service, or verify its store file on its host: broker audit verify --db FILE' });
      }
      if (after === undefined) store = page.store;
      chain.add(page.chain.map(chainRowOf));
      if (page.next === null) break;
      if (after !== undefined && page.next <= after) throw new BrokerError('upstream_error', 'the service\'s audit pages do not advance');
      after = page.next;
    }
    const { server } = await callDaemon({ op: 'whoami' });
    let keys: Keys;
    if (held) keys = { set: held, source: 'file', from: opts.keys! };
    else {
      const url = `${server}/.well-known/audit-jwks.json`;
      const jwks = (await new BrokerApi(server).request('GET', '/.well-known/audit-jwks.json', auditJwksResponse)).keys as JWK[];
      keys = { set: await AuditKeySet.of(jwks, url), source: 'service', from: url };
    }
    if (!keys.set.size && (offHost.length || chain.hasCheckpoints())) {
      throw new BrokerError('invalid_request', 'the audit log has signed checkpoints, and no key to check them was given', {
        hint: 'pass --keys with the audit JWKS you saved from the service (/.well-known/audit-jwks.json)',
      });
    }
    const source = chain.source({ sequenceMax: store?.sequenceMax ?? undefined, missingGuards: store?.missingTriggers });
    const report = await verifyAuditLog(source, { keys: keys.set, offHost });
    return { report, server, keys, store };
  } finally {
    chain.close();
  }
}

export function register(audit: Command): void {
  audit
    .command('verify')
    .description('check the audit log\'s hash chain, every signed checkpoint, off-host checkpoint copies and the append-only triggers; exit 1 if anything does not hold, naming the first bad record')
    .option('--db <file>', 'the service\'s store file (opened read-only; the service may be running); default store.sqlite of --config')
    .option('--config <file>', 'the service configuration: its store, and its audit.signingKeys for the public keys')
    .option('--server', 'download every record from the service you are logged in to, as an admin, and check them here (triggers and sequence counter: the service\'s word)')
    .option('--checkpoints <file>', 'off-host copies of the checkpoints: JSON lines of audit records (an audit sink\'s output; other records are skipped) or of compact JWS; - for stdin')
    .option('--keys <file>', 'the audit public keys: the JWKS the service serves at /.well-known/audit-jwks.json (with --server, default: fetched from the service, which proves less)')
    .option('--json', 'print the report as JSON on stdout')
    .action(action(async (opts: Opts) => {
      if (opts.server && (opts.db !== undefined || opts.config !== undefined)) {
        throw new BrokerError('invalid_request', 'give --server or --db/--config, not both', { hint: '--server checks the service you are logged in to; --db a store file on its host' });
      }
      const offHost = opts.checkpoints ? parseCheckpointLines(await readInput(opts.checkpoints, 'checkpoints file'), opts.checkpoints === '-' ? 'stdin' : opts.checkpoints) : [];
      if (opts.server) {
        const { report, server, keys, store } = await verifyServer(opts, offHost);
        // What a client cannot see for itself is labelled as the service's word, or as unchecked.
        const storeWord = store ? 'reported by the service' : 'not reported by the service: not checked';
        const counterWord = !store ? storeWord : store.sequenceMax === null ? 'the service reports none: not checked' : storeWord;
        if (opts.json) printJson({ server, keys: { source: keys.source, from: keys.from }, storeEvidence: { triggers: storeWord, sequenceCounter: counterWord }, ...report });
        else {
          printReport(report, store ? 'append-only triggers in place (the service says so)' : 'append-only triggers not checked (the service did not report them)');
          out(keys.source === 'file'
            ? `keys: ${keys.from}`
            : `keys: fetched from the service (${keys.from}); whoever controls the service can serve keys of its own: pass --keys with a copy you hold`);
        }
        if (!report.ok) process.exitCode = EXIT_NO;
        return;
      }
      const config = opts.config ? loadServerConfig(opts.config) : undefined;
      const db = opts.db ?? (config && config.store.sqlite !== ':memory:' ? config.store.sqlite : undefined);
      if (!db) throw new BrokerError('invalid_request', 'broker audit verify needs --db <file> (or --config, or --server)', { hint: 'broker audit verify --db /var/lib/broker/broker.db --keys audit-jwks.json' });
      const jwks: JWK[] = [];
      if (opts.keys) jwks.push(...parseKeys(readText(opts.keys, 'keys file'), opts.keys));
      if (config?.audit.signingKeys === 'ephemeral' && !opts.keys) {
        throw new BrokerError('invalid_request', 'the configuration\'s audit keys are ephemeral, so its checkpoints cannot be checked from it', {
          hint: 'while the service runs, save its /.well-known/audit-jwks.json and pass it with --keys',
        });
      }
      if (config?.audit.signingKeys && config.audit.signingKeys !== 'ephemeral') {
        jwks.push(...(await loadSigningKeys(config.audit.signingKeys, config.baseDir, 'audit.signingKeys')).map((k) => k.publicJwk));
      }
      const keys = await AuditKeySet.of(jwks, opts.keys ?? 'audit.signingKeys');
      const reader = SqliteAuditReader.open(db);
      let report: VerifyReport;
      try {
        if (!keys.size && (offHost.length || reader.hasCheckpoints())) {
          throw new BrokerError('invalid_request', 'the audit log has signed checkpoints, and no key to check them was given', {
            hint: 'pass --keys with the service\'s /.well-known/audit-jwks.json, or --config with its audit.signingKeys',
          });
        }
        // Two walks at once on a large store (two cores), each with its own read-only connection.
        report = await verifyAuditLog(reader.source, { keys, offHost, walker: parallelWalker(reader.path, reader.source, reader.lastSeq(), jwks) });
      } finally {
        reader.close();
      }
      if (opts.json) printJson({ db, ...report });
      else printReport(report, 'append-only triggers in place');
      // A broken log is the answer, not a failure of the command: exit 1 (README "Exit codes").
      if (!report.ok) process.exitCode = EXIT_NO;
    }));
}

function printReport(report: VerifyReport, triggers: string): void {
  const range = report.firstSeq === null ? 'no records' : `${report.records} record(s), seq ${report.firstSeq}–${report.lastSeq}`;
  for (const p of report.problems) out(`${p.seq === null ? 'store' : `seq ${p.seq}`}: ${p.kind}: ${p.message}`);
  const cps = `${report.checkpoints.verified} of ${report.checkpoints.inStore} checkpoint(s) verified${report.checkpoints.kids.length ? ` (key ${report.checkpoints.kids.join(', ')})` : ''}, ${report.checkpoints.offHost} off-host`;
  if (report.ok) out(`audit log intact: ${range}; ${cps}; ${triggers}`);
  else out(`audit log NOT intact: ${report.firstBad ? `first bad record: seq ${report.firstBad.seq} (${report.firstBad.kind})` : 'the store is not guarded'}; ${range}; ${cps}`);
}
