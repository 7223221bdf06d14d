import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { JWK } from 'jose';
import { loadServerConfig } from '../broker/config/server-config.js';
import { BrokerError, EXIT_NO } from '../broker/errors.js';
import { loadSigningKeys } from '../broker/identity/broker-tokens.js';
import { AuditKeySet, parseCheckpointLines, verifyAuditLog, type VerifyReport } from '../broker/store/audit-verify.js';
import { SqliteAuditReader } from '../broker/store/sqlite/audit-chain-source.js';
import { parallelWalker } from '../broker/store/sqlite/audit-parallel.js';
import { action, out, printJson } from './output.js';

interface Opts { db?: string; config?: string; checkpoints?: string; keys?: string; json?: boolean }

function readText(file: string, what: string): string {
  try {
    return file === '-' ? readFileSync(0, 'utf8') : readFileSync(file, 'utf8');
  } catch (e) {
    throw new BrokerError('not_found', `cannot read ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
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

export function register(audit: Command): void {
  audit
    .command('verify')
    .description('check the audit log\'s hash chain, every signed checkpoint, off-host checkpoint copies and the append-only triggers; exit 1 if anything does not hold, naming the first bad record')
    .option('--db <file>', 'the service\'s store file (opened read-only; the service may be running); default store.sqlite of --config')
    .option('--config <file>', 'the service configuration: its store, and its audit.signingKeys for the public keys')
    .option('--checkpoints <file>', 'off-host copies of the checkpoints: JSON lines of audit records (an audit sink\'s output; other records are skipped) or of compact JWS; - for stdin')
    .option('--keys <file>', 'the audit public keys: the JWKS the service serves at /.well-known/audit-jwks.json')
    .option('--json', 'print the report as JSON on stdout')
    .action(action(async (opts: Opts) => {
      const config = opts.config ? loadServerConfig(opts.config) : undefined;
      const db = opts.db ?? (config && config.store.sqlite !== ':memory:' ? config.store.sqlite : undefined);
      if (!db) throw new BrokerError('invalid_request', 'broker audit verify needs --db <file> (or --config)', { hint: 'broker audit verify --db /var/lib/broker/broker.db --keys audit-jwks.json' });
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
      const offHost = opts.checkpoints ? parseCheckpointLines(readText(opts.checkpoints, 'checkpoints file'), opts.checkpoints === '-' ? 'stdin' : opts.checkpoints) : [];
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
      else {
        const range = report.firstSeq === null ? 'no records' : `${report.records} record(s), seq ${report.firstSeq}–${report.lastSeq}`;
        for (const p of report.problems) out(`${p.seq === null ? 'store' : `seq ${p.seq}`}: ${p.kind}: ${p.message}`);
        const cps = `${report.checkpoints.verified} of ${report.checkpoints.inStore} checkpoint(s) verified${report.checkpoints.kids.length ? ` (key ${report.checkpoints.kids.join(', ')})` : ''}, ${report.checkpoints.offHost} off-host`;
        if (report.ok) out(`audit log intact: ${range}; ${cps}; append-only triggers in place`);
        else out(`audit log NOT intact: ${report.firstBad ? `first bad record: seq ${report.firstBad.seq} (${report.firstBad.kind})` : 'the store is not guarded'}; ${range}; ${cps}`);
      }
      // A broken log is the answer, not a failure of the command: exit 1 (README "Exit codes").
      if (!report.ok) process.exitCode = EXIT_NO;
    }));
}
