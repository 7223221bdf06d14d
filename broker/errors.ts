import { EXIT_CODES } from './exit-codes.cjs';

export { EXEC_EXIT, EXIT_CODES, EXIT_NO, EXIT_OK } from './exit-codes.cjs';

/**
 * The one error type of the project. `code` is a closed union, so a `switch` on it narrows, HTTP
 * status and CLI exit code derive from it, and callers never parse message text.
 *
 * Messages are for people and must never carry a secret (token, secret key, refresh token, private
 * key). Detail that helps an operator but should not reach a client goes in `cause` (logged
 * server-side, never serialised into a response).
 */
export const ERROR_CODES = {
  // caller mistakes
  invalid_request: 400,
  invalid_template: 400,
  invalid_config: 400,
  unauthenticated: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  rate_limited: 429,
  // an administrator froze what is asked for (broker admin freeze): 423 Locked (RFC 4918 §11.3),
  // the resource is fine and the caller's request is well-formed, it is locked for now
  frozen: 423,
  // a task start waits for a human: the requester's fresh IdP login, or approvers (RFC 9470 challenge)
  confirmation_required: 401,
  // local environment (CLI side)
  not_logged_in: 401,
  keychain_unavailable: 500,
  // upstream (IdP, STS, IAM, Vault, the broker service as seen from the CLI)
  upstream_error: 502,
  upstream_unavailable: 503,
  // the audit store could not record a decision: fail closed
  audit_unavailable: 503,
  internal: 500,
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Every error code has an exit status, and the exit table names no other code (exit-codes.cts). */
type SameKeys<A, B> = [Exclude<keyof A, keyof B>, Exclude<keyof B, keyof A>] extends [never, never] ? true : false;
const exitTableCoversErrorCodes: SameKeys<typeof ERROR_CODES, typeof EXIT_CODES> = true;
void exitTableCoversErrorCodes;

export interface ErrorDetail {
  /** JSON pointer (API bodies) or `file:field.path` (templates, config). */
  path?: string;
  message: string;
  hint?: string;
}

export class BrokerError extends Error {
  override readonly name = 'BrokerError';
  readonly code: ErrorCode;
  readonly details: ErrorDetail[] | undefined;
  /** What to do about it, shown to people after the message. */
  readonly hint: string | undefined;
  /** For `rate_limited`: when to try again (the HTTP `Retry-After` header, RFC 9110 §10.2.3). */
  readonly retryAfterSeconds: number | undefined;
  /**
   * For `confirmation_required`: the IdP login was not recent enough, and a new one at most this
   * old would do (RFC 9470 §3, the `max_age` of the step-up challenge).
   */
  readonly stepUpMaxAgeSeconds: number | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { cause?: unknown; details?: ErrorDetail[]; hint?: string; retryAfterSeconds?: number; stepUpMaxAgeSeconds?: number } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details;
    this.hint = options.hint;
    this.retryAfterSeconds = options.retryAfterSeconds;
    this.stepUpMaxAgeSeconds = options.stepUpMaxAgeSeconds;
  }

  get status(): number {
    return ERROR_CODES[this.code];
  }

  /** The CLI's exit status for this error (exit-codes.cts; README "Exit codes"). */
  get exitCode(): number {
    return EXIT_CODES[this.code];
  }

  toJSON(): { code: ErrorCode; message: string; hint?: string; details?: ErrorDetail[] } {
    return {
      code: this.code,
      message: this.message,
      ...(this.hint ? { hint: this.hint } : {}),
      ...(this.details ? { details: this.details } : {}),
    };
  }
}

export function isBrokerError(e: unknown): e is BrokerError {
  return e instanceof BrokerError;
}

export function isErrorCode(s: unknown): s is ErrorCode {
  return typeof s === 'string' && Object.hasOwn(ERROR_CODES, s);
}
