import { CommanderError, type Command } from 'commander';
import { BrokerError, isBrokerError } from '../broker/errors.js';

/**
 * stdout carries a command's result: with --json one JSON document (the result, or the error), else
 * the same facts in readable form. stderr carries what is said to the person along the way:
 * prompts, warnings, hints, errors.
 */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** The readable form of a result (stdout). */
export function out(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** A line for the person running the command (stderr). */
export function info(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** Commands whose own failures all exit with one status, whatever the error (broker exec: 125). */
const failureExits = new WeakMap<Command, number>();

export function failuresExitWith<C extends Command>(command: C, status: number): C {
  failureExits.set(command, status);
  return command;
}

export function ownFailureExit(command: Command | undefined): number | undefined {
  return command ? failureExits.get(command) : undefined;
}

/**
 * One clear report of a failure on stderr, never a stack trace: message, then each detail with its
 * location, then the hint. With `json`, also `{"error": {code, message, hint?, details?}}` on
 * stdout, so scripts read errors as they read results. Unknown errors are reported as `internal`;
 * their stack only with BROKER_DEBUG. Returns the exit status.
 */
export function reportError(e: unknown, opts: { json?: boolean; command?: Command } = {}): number {
  const err = isBrokerError(e) ? e : new BrokerError('internal', `unexpected error: ${e instanceof Error ? e.message : String(e)}`);
  const lines = [`broker: ${err.message}`];
  for (const d of err.details ?? []) {
    lines.push(`  ${d.path ? `${d.path}: ` : ''}${d.message}${d.hint ? ` (${d.hint})` : ''}`);
  }
  if (err.hint) lines.push(`  hint: ${err.hint}`);
  process.stderr.write(`${lines.join('\n')}\n`);
  if (!isBrokerError(e) && process.env.BROKER_DEBUG) process.stderr.write(`${(e as Error)?.stack ?? ''}\n`);
  if (opts.json) printJson({ error: err.toJSON() });
  return ownFailureExit(opts.command) ?? err.exitCode;
}

/**
 * Ends a command with an exit status and no error report: what was to say is said (e.g. a start
 * request left pending, `broker task --no-wait`).
 */
export class QuietExit extends Error {
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
  }
}

/**
 * Wraps a command action so any failure becomes a clean report and the exit status of its error
 * code; with the command's --json set, the error is also the JSON document on stdout.
 */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void> | void) {
  return async (...args: A): Promise<void> => {
    try {
      await fn(...args);
    } catch (e) {
      // `--help` inside an action (broker exec): commander's own exit, for main() to take.
      if (e instanceof CommanderError) throw e;
      if (e instanceof QuietExit) {
        process.exitCode = e.exitCode;
        return;
      }
      // Commander passes the command itself last.
      const command = args.at(-1) as Command;
      process.exitCode = reportError(e, { json: command.opts().json === true, command });
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
