/**
 * The daemon's wire protocol on its Unix socket, written once: one JSON request per line, one JSON
 * response per line (`{ok: true, result}` or `{ok: false, error}`), zod schemas for every request
 * and for the result of every op. The daemon parses requests with them (parseRequest); clients
 * validate what they receive with them (daemon-client.ts). Types are inferred from the schemas.
 *
 * The one exception, on purpose: the credential_process fast path (cli/credential-process.cts and
 * socket.cts) loads no ES module and no zod — it runs for every AWS CLI command, and
 * bench/credential-process measures it. It imports this module's *types* only (erased), and checks
 * the credentials document by hand; test/wire-contract.test.ts feeds the same documents to that
 * check and to `processCredentials` and requires the same verdict.
 *
 * Results are tolerant like the service API's (wire/service-api.ts): unknown fields are dropped, so
 * a newer daemon can add some without breaking an older CLI.
 */
import { z } from 'zod';
import { BrokerError, type ErrorCode, type ErrorDetail } from '../errors.js';
import { MAX_AGENT_NAME_CHARS, MAX_PARAM_VALUE_CHARS, MAX_REASON_CHARS, TEMPLATE_NAME_RE, TEMPLATE_NAME_RULE } from '../limits/names.js';
import { bodyIssueDetails } from '../wire/json-pointer.js';
import {
  adminAuditResponse, adminEndResponse, adminFreezeResponse, adminFreezesResponse, adminOffboardResponse, adminReloadResponse, adminSessionResponse, adminSessionsResponse, adminStatusResponse,
  adminUnfreezeResponse, confirmationStatusResponse, deviceConfirmationResponse, errorBody, processCredentials, REQUEST_ID_RE, sessionView,
  startRequestView, templateSummary, timestamp, whoamiResponse,
} from '../wire/service-api.js';

export const PROTOCOL_VERSION = 1;
/** A request line larger than this is refused (no op needs more than a few hundred bytes). */
export const MAX_REQUEST_BYTES = 64 * 1024;

// ---- requests ---------------------------------------------------------------------------------

const templateName = z.string().regex(TEMPLATE_NAME_RE, `must be a template name (${TEMPLATE_NAME_RULE})`);

/**
 * What `broker task`/`exec` ask to start. Shape and bounds only: the service applies the rules of
 * parameter names, agent names and durations, and says where a value is wrong.
 */
export const startRequest = z.strictObject({
  template: templateName,
  params: z.record(z.string().max(64), z.string().max(MAX_PARAM_VALUE_CHARS)),
  reason: z.string().max(MAX_REASON_CHARS),
  agent: z.string().min(1).max(MAX_AGENT_NAME_CHARS),
  ttl: z.string().max(32).optional(),
  /** The start request a human confirmed for exactly this template, parameters and ttl (the service checks). */
  confirmedRequest: z.string().regex(REQUEST_ID_RE, 'must be a start request id').optional(),
  /** A template with `confirm.breakGlass`: start without approvers (a reason is required; the requester still confirms). */
  breakGlass: z.boolean().optional(),
});
export type StartRequest = z.infer<typeof startRequest>;

const requestId = z.string().regex(REQUEST_ID_RE, 'must be a start request id (req_…)');

/**
 * The admin commands (`broker admin …`), passed on to `/v1/admin/*` under the developer's login:
 * shapes and bounds only; the service checks the rest (who is an admin, reasons, names).
 */
const text = (max: number) => z.string().max(max);
const adminReason = text(MAX_REASON_CHARS);
const adminScope = { template: text(64).optional(), all: z.literal(true).optional() };

export const daemonRequest = z.discriminatedUnion('op', [
  z.strictObject({ op: z.literal('ping') }),
  z.strictObject({ op: z.literal('credentials'), task: templateName }),
  /** The task's Vault token (`broker vault-token`, `broker exec` for templates with a vault section). */
  z.strictObject({ op: z.literal('vault-token'), task: templateName.optional() }),
  /**
   * `broker exec`: a container credentials endpoint token for its task session (container-endpoint.ts).
   * Answered on a connection the exec keeps open for its whole life: when it closes, however the
   * exec ended, the token is revoked and its file removed.
   */
  z.strictObject({ op: z.literal('exec-endpoint'), task: templateName, session: z.string().min(1).max(100) }),
  z.strictObject({ op: z.literal('start'), request: startRequest }),
  /** Reuse the template's active session (its params must match, when given) or start one; `broker exec`. */
  z.strictObject({ op: z.literal('ensure'), request: startRequest, paramsGiven: z.boolean() }),
  z.strictObject({ op: z.literal('status') }),
  /** A start request (its requester's or one the caller may approve), to show or to wait for. */
  z.strictObject({ op: z.literal('request'), id: requestId }),
  /** The caller's own recent requests (`me`), or the pending ones they may approve (`approver`). */
  z.strictObject({ op: z.literal('requests'), for: z.enum(['me', 'approver']) }),
  z.strictObject({ op: z.literal('cancel-request'), id: requestId }),
  /** A decision from a terminal: the service starts a device authorization (RFC 8628) at the IdP for whoever decides. */
  z.strictObject({ op: z.literal('confirm-device'), id: requestId, decision: z.enum(['confirm', 'approve', 'deny']), reason: z.string().max(MAX_REASON_CHARS) }),
  /** One poll of that device confirmation (the service asks the IdP at most once per interval). */
  z.strictObject({ op: z.literal('confirmation'), id: requestId, confirmation: z.string().regex(/^[A-Za-z0-9_-]{1,100}$/, 'must be a confirmation id') }),
  z.strictObject({ op: z.literal('end'), template: templateName.optional(), all: z.boolean().optional() }),
  z.strictObject({ op: z.literal('templates') }),
  z.strictObject({ op: z.literal('whoami') }),
  /** `broker login`/`logout` changed the keychain: read it again (or drop the login). */
  z.strictObject({ op: z.literal('reload-login') }),
  z.strictObject({
    op: z.literal('admin-sessions'),
    filter: z.strictObject({ developer: text(320).optional(), template: text(64).optional(), agent: text(64).optional(), active: z.boolean().optional(), since: text(32).optional() }),
  }),
  z.strictObject({ op: z.literal('admin-session'), id: text(100) }),
  z.strictObject({ op: z.literal('admin-end'), sessions: z.array(text(100)).max(500).optional(), developer: text(320).optional(), template: text(64).optional(), reason: adminReason }),
  z.strictObject({ op: z.literal('admin-offboard'), developer: text(320), reason: adminReason }),
  z.strictObject({ op: z.literal('admin-freeze'), ...adminScope, reason: adminReason, revoke: z.boolean() }),
  z.strictObject({ op: z.literal('admin-unfreeze'), ...adminScope, reason: adminReason }),
  z.strictObject({ op: z.literal('admin-freezes') }),
  z.strictObject({ op: z.literal('admin-status') }),
  z.strictObject({ op: z.literal('admin-reload'), reason: adminReason }),
  /** `broker audit show|tail|cloudtrail`: the query of GET /v1/admin/audit, as its parameters (the service checks them). */
  z.strictObject({
    op: z.literal('admin-audit'),
    query: z.record(z.string().max(32), z.union([text(400), z.array(text(400)).max(100)])).refine((q) => Object.keys(q).length <= 20, 'at most 20 parameters'),
  }),
  z.strictObject({ op: z.literal('stop') }),
]);
export type DaemonRequest = z.infer<typeof daemonRequest>;
export type DaemonOp = DaemonRequest['op'];

/** A request line as the daemon received it, checked; invalid_request naming every problem by JSON pointer. */
export function parseRequest(raw: unknown): DaemonRequest {
  const r = daemonRequest.safeParse(raw);
  if (!r.success) {
    throw new BrokerError('invalid_request', 'malformed request to the broker daemon', {
      details: bodyIssueDetails(r.error),
      hint: 'the broker CLI and daemon may be different versions: broker daemon stop, then retry',
    });
  }
  return r.data;
}

// ---- results, per op --------------------------------------------------------------------------

const time = timestamp;

/** How requests for credentials were answered since the daemon started. */
export const cacheStats = z.object({
  credentialRequests: z.number(),
  servedFromMemory: z.number(),
  waitedForUpstream: z.number(),
  /** Of those that waited, how many joined an upstream request another caller had started (single flight). */
  sharedUpstream: z.number(),
  upstreamIssues: z.number(),
});
export type CacheStats = z.infer<typeof cacheStats>;

/** The AWS credentials held for one task (never the secrets themselves). */
export const entryStatus = z.object({
  template: z.string(),
  sessionId: z.string(),
  credentialsExpireAt: time.nullable(),
  nextRefreshAt: time.nullable(),
  health: z.enum(['ok', 'retrying']),
  /** An upstream request for this task is under way. */
  refreshing: z.boolean(),
  lastError: z.string().nullable(),
});
export type EntryStatus = z.infer<typeof entryStatus>;

/** The Vault token held for one task (its accessor, never the token). */
export const vaultTokenStatus = z.object({ template: z.string(), accessor: z.string().nullable(), expiresAt: time.nullable(), lastError: z.string().nullable() });
export type VaultTokenStatus = z.infer<typeof vaultTokenStatus>;

/** Whether other processes of the user are kept out of the daemon's memory (memory-protection.ts). */
export const memoryProtectionState = z.discriminatedUnion('protected', [
  z.object({ protected: z.literal(true), how: z.string() }),
  z.object({ protected: z.literal(false), reason: z.string() }),
]);
export type MemoryProtection = z.infer<typeof memoryProtectionState>;

/** The container credentials endpoint of `broker exec` (no token, ever). */
export const containerEndpointStatus = z.object({
  url: z.string().nullable(),
  /** `broker exec`s with a live token. */
  execs: z.number(),
  served: z.number(),
  refused: z.number(),
});

/** `exec-endpoint`: where the exec's task credentials are served, and the file holding its token. */
export const execEndpointAnswer = z.object({ url: z.string().startsWith('http://127.0.0.1:'), tokenFile: z.string().min(1) });
export type ExecEndpointAnswer = z.infer<typeof execEndpointAnswer>;

/** `ping` and `reload-login`: who the daemon is, for whom, and what it holds. */
/** Where the daemon reads the login (keychain.ts); the kernel keyring's is that of the session it was started in. */
export const loginStoreInfo = z.object({
  kind: z.enum(['secret-service', 'kernel-keyring']),
  label: z.string(),
  keyring: z.number().int().optional(),
});

export const pingResult = z.object({
  pid: z.number().int(),
  version: z.number().int(),
  serverUrl: z.string().nullable(),
  developer: z.string().nullable(),
  startedAt: time,
  memory: memoryProtectionState,
  stats: cacheStats,
  tasks: z.array(entryStatus),
  /** Absent from daemons older than the endpoint. */
  containerEndpoint: containerEndpointStatus.optional(),
  /** Absent from older daemons, null when it has none (it then refuses to start). */
  loginStore: loginStoreInfo.nullable().optional(),
});
export type PingResult = z.infer<typeof pingResult>;

/** `start` and `ensure`: what `broker task`/`exec` learn; never a secret (exec asks for the Vault token on its own). */
export const startedTask = z.object({
  session: sessionView,
  reused: z.boolean(),
  accessKeyId: z.string().optional(),
  credentialsExpire: time.optional(),
  vaultAccessor: z.string().optional(),
  vaultTokenExpires: time.optional(),
});
export type StartedTask = z.infer<typeof startedTask>;

/**
 * `start` and `ensure` of a template that needs a human: no session, the service's pending start
 * request (its 401 `insufficient_user_authentication` or 202, code `confirmation_required`), for the
 * CLI to show and wait for. A result, not an error: nothing failed, a human has yet to decide.
 */
export const confirmationPending = z.object({
  confirmationRequired: z.literal(true),
  message: z.string(),
  /** 401: the requester's own step-up (RFC 9470); 202: approvers are needed too. */
  status: z.union([z.literal(401), z.literal(202)]),
  request: startRequestView,
});
export type ConfirmationPending = z.infer<typeof confirmationPending>;

/** What `start`/`ensure` answer: a session, or the request that waits for a human. */
export const startAnswer = z.union([confirmationPending, startedTask]);
export type StartAnswer = z.infer<typeof startAnswer>;

export function isConfirmationPending(a: StartAnswer): a is ConfirmationPending {
  return 'confirmationRequired' in a && a.confirmationRequired === true;
}

/** `vault-token`: the task's token (a secret: `broker vault-token` prints it, `broker exec` puts it in the child's environment). */
export const vaultTokenAnswer = z.object({
  template: z.string(), token: z.string().min(1), accessor: z.string(), address: z.string(), namespace: z.string().nullable(), expiresAt: time,
});
export type VaultTokenAnswer = z.infer<typeof vaultTokenAnswer>;

/** `end`: the sessions ended, and their Vault tokens the service could not revoke yet (it retries). */
export const endedTasks = z.object({
  ended: z.array(z.object({ id: z.string(), template: z.string(), vaultTokensPending: z.array(z.object({ accessor: z.string(), error: z.string().optional() })) })),
});
export type EndedTasks = z.infer<typeof endedTasks>;

/** `status`: the developer's active sessions (from the service) with what the daemon holds for each. */
export const daemonStatus = z.object({
  serverUrl: z.string().nullable(),
  developer: z.string().nullable(),
  sessions: z.array(sessionView.extend({
    credentials: entryStatus.nullable(), vaultToken: vaultTokenStatus.nullable(),
    /** The service could not be asked: the daemon holds credentials or a Vault token for this session, as it last learned it. */
    heldOnly: z.literal(true).optional(),
  })),
  /**
   * Set when the service could not be asked: `sessions` then lists the sessions the daemon holds
   * credentials or a Vault token for, as it last learned them, each marked `heldOnly`.
   */
  serviceError: z.string().optional(),
});
export type DaemonStatus = z.infer<typeof daemonStatus>;

/** The result schema of every op: what callDaemon validates an answer against. */
export const resultSchemas = {
  ping: pingResult,
  credentials: processCredentials,
  'vault-token': vaultTokenAnswer,
  'exec-endpoint': execEndpointAnswer,
  start: startAnswer,
  ensure: startAnswer,
  status: daemonStatus,
  request: startRequestView,
  requests: z.array(startRequestView),
  'cancel-request': startRequestView,
  'confirm-device': deviceConfirmationResponse,
  confirmation: confirmationStatusResponse,
  end: endedTasks,
  templates: z.array(templateSummary),
  whoami: whoamiResponse.extend({ server: z.string(), loginStore: loginStoreInfo.nullable().optional() }),
  'reload-login': pingResult,
  'admin-sessions': adminSessionsResponse,
  'admin-session': adminSessionResponse,
  'admin-end': adminEndResponse,
  'admin-offboard': adminOffboardResponse,
  'admin-freeze': adminFreezeResponse,
  'admin-unfreeze': adminUnfreezeResponse,
  'admin-freezes': adminFreezesResponse,
  'admin-status': adminStatusResponse,
  'admin-reload': adminReloadResponse,
  'admin-audit': adminAuditResponse,
  stop: z.object({ stopping: z.literal(true) }),
} as const satisfies { [Op in DaemonOp]: z.ZodType };
export type DaemonResult<Op extends DaemonOp> = z.output<(typeof resultSchemas)[Op]>;

// ---- responses --------------------------------------------------------------------------------

/** A daemon-side failure as sent: the BrokerError's code, message, hint and details. */
export interface WireError {
  code: ErrorCode;
  message: string;
  hint?: string;
  details?: ErrorDetail[];
}

export type DaemonResponse<T = unknown> = { ok: true; result: T } | { ok: false; error: WireError };

/**
 * A response line as received. The error's `code` is any string (errorBody), deliberately: a newer
 * daemon may know codes this CLI does not (daemon-client.ts treats them as `internal`).
 */
export const daemonResponse = z.discriminatedUnion('ok', [
  z.object({ ok: z.literal(true), result: z.unknown() }),
  z.object({ ok: z.literal(false), error: errorBody }),
]);
