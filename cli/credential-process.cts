/**
 * `broker credential-process --task <template>`: the AWS SDKs' credential_process contract.
 * stdout carries exactly one complete JSON document (Version 1, Expiration always set, so clients
 * refresh) or nothing at all; every failure is one line on stderr and a non-zero exit (AWS SDKs and
 * Tools Reference Guide, "Process credential provider"; the CLI User Guide's "Sourcing credentials
 * with an external process" asks for nothing secret on stderr): the exit status of the error's
 * code, as for every command (exit-codes.cts; README "Exit codes"), 2 for a usage error. AWS
 * clients only look at non-zero; scripts and people can tell the cases apart.
 *
 * The AWS CLI runs this for every command (aws-cli#5585), so it only asks the per-user daemon, which
 * answers from memory. The import graph is three tiny modules and builtins: no commander, zod, YAML,
 * AWS SDK or keychain binding (bench/credential-process measures it). The daemon is started, and the
 * heavier modules loaded, only when none is running.
 */
import { daemonCall, DIR_REFUSED, isNoDaemon, socketPath } from '../broker/daemon/socket.cjs';
import { EXIT_CODES, exitCodeFor } from '../broker/exit-codes.cjs';
import type { DaemonResponse } from '../broker/daemon/protocol.js';
import type { ProcessCredentials } from '../broker/wire/service-api.js';

/** Under Go SDK v2's one-minute kill (aws-sdk-go-v2 `credentials/processcreds`, `DefaultTimeout`); JS and Python clients would wait forever. */
const TIMEOUT_MS = 50_000;
const USAGE = 'usage: broker credential-process --task <template>';
/**
 * Literal copies of the template-name rule (limits/names.ts `TEMPLATE_NAME_RE`) and of the API's
 * time format (wire/service-api.ts `RFC3339_UTC_RE`): this module loads no ES module, so it cannot
 * import them. test/wire-contract.test.ts asserts each copy equals its source.
 */
export const TEMPLATE_RE = /^[a-z0-9-]{1,40}$/;
export const TEMPLATE_RULE = '[a-z0-9-], at most 40 chars';
export const RFC3339_UTC_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z$/;

const nonEmptyString = (v: unknown): v is string => typeof v === 'string' && v.length > 0;

/**
 * The credentials document checked by hand, the fast path's stand-in for the protocol's zod schema
 * (wire/service-api.ts `processCredentials`): the same verdict on every document
 * (test/wire-contract.test.ts). Returns the document to print (only the contract's fields), or
 * undefined when it is not a complete one.
 */
export function credentialsDocument(c: unknown): ProcessCredentials | undefined {
  if (typeof c !== 'object' || c === null || Array.isArray(c)) return undefined;
  const d = c as Record<string, unknown>;
  if (d.Version !== 1 || !nonEmptyString(d.AccessKeyId) || !nonEmptyString(d.SecretAccessKey) || !nonEmptyString(d.SessionToken)) return undefined;
  if (typeof d.Expiration !== 'string' || !RFC3339_UTC_RE.test(d.Expiration)) return undefined;
  if (d.AccountId !== undefined && typeof d.AccountId !== 'string') return undefined;
  return {
    Version: 1, AccessKeyId: d.AccessKeyId, SecretAccessKey: d.SecretAccessKey, SessionToken: d.SessionToken,
    Expiration: d.Expiration, ...(d.AccountId ? { AccountId: d.AccountId } : {}),
  };
}

class UsageError extends Error {}

function parseArgs(args: string[]): string {
  let task: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--task') task = args[++i];
    else if (a.startsWith('--task=')) task = a.slice('--task='.length);
    else if (a === '-h' || a === '--help') throw new UsageError(USAGE);
    else throw new UsageError(`unknown argument "${a}" (${USAGE})`);
  }
  if (task === undefined) throw new UsageError(`--task <template> is required (e.g. credential_process = broker credential-process --task deploy-lambda)`);
  if (!TEMPLATE_RE.test(task)) throw new UsageError(`--task "${task.slice(0, 60)}" is not a template name (${TEMPLATE_RULE})`);
  return task;
}

async function ask(task: string): Promise<DaemonResponse> {
  try {
    return await daemonCall(socketPath(), { op: 'credentials', task }, TIMEOUT_MS);
  } catch (e) {
    if (!isNoDaemon(e)) throw e;
    // First call of the day: start the daemon (slow path, loaded only now).
    const { callDaemon } = await import('../broker/daemon/daemon-client.js');
    return { ok: true, result: await callDaemon({ op: 'credentials', task }, { timeoutMs: TIMEOUT_MS }) };
  }
}

function fail(message: string, exitCode: number): void {
  // One line: clients show stderr as is, and some log it (so never anything secret in it).
  process.stderr.write(`broker credential-process: ${message.replace(/\s*\n\s*/g, ' ')}\n`);
  process.exitCode = exitCode;
}

/**
 * The exit status of a failure that is not the daemon's answer: a BrokerError of the slow path has
 * its code; a directory that fails the check is invalid_config (as daemon-client.ts says it); a
 * socket error or timeout means the daemon could not be asked.
 */
function exitCodeOf(e: unknown): number {
  if (e instanceof UsageError) return EXIT_CODES.invalid_request;
  const code = (e as { code?: unknown } | null)?.code;
  if (code === DIR_REFUSED) return EXIT_CODES.invalid_config;
  if (typeof code === 'string' && Object.hasOwn(EXIT_CODES, code)) return exitCodeFor(code);
  return EXIT_CODES.upstream_unavailable;
}

export async function main(args: string[]): Promise<void> {
  try {
    const task = parseArgs(args);
    const r = await ask(task);
    if (!r.ok) {
      fail(`${r.error.message}${r.error.hint ? ` (${r.error.hint})` : ''}`, exitCodeFor(r.error.code));
      return;
    }
    const doc = credentialsDocument(r.result);
    if (!doc) {
      fail('the broker daemon returned incomplete credentials (restart it: broker daemon stop)', EXIT_CODES.upstream_error);
      return;
    }
    process.stdout.write(`${JSON.stringify(doc)}\n`);
  } catch (e) {
    const err = e as Error & { hint?: string };
    fail(e instanceof UsageError ? err.message : `${err.message}${err.hint ? ` (${err.hint})` : ''}`, exitCodeOf(e));
  }
}
