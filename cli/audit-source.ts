import type { Command } from 'commander';
import { queryAudit } from '../broker/audit/principal-chain.js';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { BrokerError } from '../broker/errors.js';
import { openAuditSearchReadOnly } from '../broker/store/store-file.js';
import { adminAuditQuery, type AdminAuditResponse, queryIssueDetails } from '../broker/wire/service-api.js';

/** The parameters of an audit query, as `GET /v1/admin/audit` takes them. */
export type AuditParams = Record<string, string | string[] | undefined>;

/** One page of an audit query, answered by the service or by a store file: the same function either way. */
export interface AuditSource {
  page(params: AuditParams): Promise<AdminAuditResponse>;
  close(): void;
}

export function addSourceOptions(c: Command): Command {
  return c
    .option('--server', 'ask the service you are logged in to, as an admin (the default)')
    .option('--db <file>', 'read the service\'s store file directly, read-only (on its host, for incident response; not audited)');
}

const defined = (p: AuditParams): Record<string, string | string[]> =>
  Object.fromEntries(Object.entries(p).filter((e): e is [string, string | string[]] => e[1] !== undefined));

/**
 * `--db FILE`: the query checked by the route's own schema and answered by the route's own function
 * (broker/audit/principal-chain.ts) on the file; otherwise the daemon asks the route as the admin.
 */
export function auditSource(opts: { server?: boolean; db?: string }): AuditSource {
  if (opts.server && opts.db !== undefined) throw new BrokerError('invalid_request', 'give --server or --db, not both');
  if (opts.db === undefined) {
    return { page: (params) => callDaemon({ op: 'admin-audit', query: defined(params) }), close: () => {} };
  }
  const file = openAuditSearchReadOnly(opts.db);
  return {
    page: async (params) => {
      const parsed = adminAuditQuery.safeParse(defined(params));
      if (!parsed.success) {
        const details = queryIssueDetails(parsed.error);
        throw new BrokerError('invalid_request', `${details[0]?.path ? `${details[0].path}: ` : ''}${details[0]?.message ?? 'invalid query'}`, { details });
      }
      return queryAudit(file.search, parsed.data, Date.now());
    },
    close: () => file.close(),
  };
}
