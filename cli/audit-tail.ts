import type { Command } from 'commander';
import { BrokerError } from '../broker/errors.js';
import { MAX_AUDIT_PAGE, type AdminAuditResponse } from '../broker/wire/service-api.js';
import { recordLine } from './audit-output.js';
import { addSourceOptions, auditSource } from './audit-source.js';
import { action, out } from './output.js';

export function register(audit: Command): void {
  addSourceOptions(audit
    .command('tail')
    .description('the latest audit records, one per line (no record holds a secret); -f follows the log as it grows')
    .option('-n, --lines <n>', 'how many of the latest records to print first', '20')
    .option('-f, --follow', 'keep printing new records as they are written (polls with the seq cursor; Ctrl-C stops)')
    .option('--interval <seconds>', 'with -f: seconds between polls', '2')
    .option('--json', 'one JSON object per record per line (JSON Lines), as GET /v1/admin/audit gives them'))
    .action(action(async (opts: { lines: string; follow?: boolean; interval: string; json?: boolean; server?: boolean; db?: string }) => {
      const n = Number(opts.lines);
      if (!Number.isInteger(n) || n < 0 || n > MAX_AUDIT_PAGE) throw new BrokerError('invalid_request', `--lines must be a whole number from 0 to ${MAX_AUDIT_PAGE}`);
      const interval = Number(opts.interval);
      if (!Number.isFinite(interval) || interval < 0.2 || interval > 3600) throw new BrokerError('invalid_request', '--interval must be from 0.2 to 3600 seconds');
      const source = auditSource(opts);
      const print = (r: AdminAuditResponse['records'][number]) => out(opts.json ? JSON.stringify(r) : recordLine(r));
      try {
        // The first page is the one audited (admin.view); the polls after it carry the cursor.
        const first = await source.page({ view: 'records', latest: '1', limit: String(Math.max(n, 1)) });
        const shown = first.records.slice(first.records.length - n);
        for (const r of shown) print(r);
        let after = first.records.at(-1)?.seq ?? 0;
        if (!opts.follow) return;
        let stop = false;
        process.once('SIGINT', () => { stop = true; });
        while (!stop) {
          await new Promise((res) => setTimeout(res, interval * 1000));
          for (;;) {
            const page = await source.page({ view: 'records', after: String(after), limit: String(MAX_AUDIT_PAGE) });
            for (const r of page.records) print(r);
            after = page.records.at(-1)?.seq ?? after;
            if (page.next === null) break;
          }
        }
      } finally {
        source.close();
      }
    }));
}
