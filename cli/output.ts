import { BrokerError, isBrokerError } from '../broker/errors.js';

/** stdout is for data; everything meant for people goes to stderr. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function info(line: string): void {
  process.stderr.write(`${line}\n`);
}

/**
 * One clear report of a failure on stderr, never a stack trace: message, then each detail with its
 * location, then the hint. Unknown errors are reported generically (their text may hold anything).
 */
export function reportError(e: unknown): number {
  if (isBrokerError(e)) {
    const lines = [`broker: ${e.message}`];
    for (const d of e.details ?? []) {
      lines.push(`  ${d.path ? `${d.path}: ` : ''}${d.message}${d.hint ? ` (${d.hint})` : ''}`);
    }
    if (e.hint) lines.push(`  hint: ${e.hint}`);
    process.stderr.write(`${lines.join('\n')}\n`);
    return 1;
  }
  const message = e instanceof Error ? e.message : String(e);
  process.stderr.write(`broker: unexpected error: ${message}\n`);
  if (process.env.BROKER_DEBUG) process.stderr.write(`${(e as Error)?.stack ?? ''}\n`);
  return 1;
}

/** Wraps a command action so any failure becomes a clean report and exit code 1. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void> | void) {
  return async (...args: A): Promise<void> => {
    try {
      await fn(...args);
    } catch (e) {
      process.exitCode = reportError(e);
    }
  };
}

/** Collects repeatable `--param k=v` options. */
export function collectParam(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) {
    throw new BrokerError('invalid_request', `--param "${value}" is not of the form name=value`, {
      hint: 'e.g. --param function=checkout-api',
    });
  }
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}
