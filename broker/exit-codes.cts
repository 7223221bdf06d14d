/**
 * The CLI's exit codes: one table, from the error code (errors.ts) to the exit status, so that no
 * command picks its own and a script can act on the kind of failure without reading text. Codes
 * that call for the same remedy share an exit status (invalid_config and invalid_template: fix the
 * file; not_logged_in and unauthenticated: broker login). README "Exit codes" lists this table; a
 * test compares the two.
 *
 * CommonJS with no imports at run time: the credential_process fast path (cli/credential-process.cts)
 * loads it, and may load nothing ESM (errors.ts re-exports it for everyone else).
 */
/**
 * Its keys are errors.ts' error codes, neither more nor fewer: errors.ts checks that at compile
 * time (this module imports nothing of it, so the two stay free of a cycle).
 */
type ExitErrorCode = keyof typeof EXIT_CODES;

/** Success. */
export const EXIT_OK = 0;
/**
 * The command ran and its answer is no, which is no error: `policy test` denied, `policy validate`
 * or `policy check` found problems, `daemon status` not running, `daemon install` could not enable
 * the unit it wrote.
 */
export const EXIT_NO = 1;

export const EXIT_CODES = {
  // 2: the command line or a request is wrong (commander's own parse errors too)
  invalid_request: 2,
  payload_too_large: 2,
  // 3: a configuration or template file is wrong
  invalid_config: 3,
  invalid_template: 3,
  // 4: log in (again)
  not_logged_in: 4,
  unauthenticated: 4,
  forbidden: 5,
  not_found: 6,
  conflict: 7,
  // 8–11: try again later, or ask the service's operator
  rate_limited: 8,
  upstream_error: 9,
  upstream_unavailable: 10,
  audit_unavailable: 11,
  keychain_unavailable: 12,
  // a start request waits for a human (broker task --no-wait, or stopped waiting): not a failure of the command line
  confirmation_required: 13,
  // an administrator froze the template, or all of them (broker admin freeze): wait for the unfreeze
  frozen: 14,
  // sysexits.h EX_SOFTWARE: a bug
  internal: 70,
} as const;

/**
 * `broker exec` keeps its child's exit status, so its own cannot be told apart by error code: the
 * convention of GNU env(1) ("Exit status") and `docker run`: 125 exec itself failed, before the
 * child started (whatever the error code, usage errors too); 126 the command was found but cannot
 * be run (no permission, a directory, not an executable format); 127 the command was not found.
 */
export const EXEC_EXIT = { failed: 125, cannotRun: 126, notFound: 127 } as const;

/** The exit status for an error code; an unknown code (a newer daemon's) is a failure all the same. */
export function exitCodeFor(code: string): number {
  return Object.hasOwn(EXIT_CODES, code) ? EXIT_CODES[code as ExitErrorCode] : EXIT_CODES.internal;
}

/**
 * The error code an exit status stands for, for a broker process that died with it (the daemon
 * failing to start): the first code of the table with that status; undefined for 0, 1 and others.
 */
export function errorCodeForExit(status: number): ExitErrorCode | undefined {
  return (Object.keys(EXIT_CODES) as ExitErrorCode[]).find((c) => EXIT_CODES[c] === status);
}
