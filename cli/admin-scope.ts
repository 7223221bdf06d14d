import { BrokerError } from '../broker/errors.js';

/** `--template T` or `--all`, exactly one (freeze, unfreeze). */
export function freezeScope(opts: { template?: string; all?: boolean }, command: string): { template: string } | { all: true } {
  if ((opts.template === undefined) === (opts.all !== true)) {
    throw new BrokerError('invalid_request', `say what to ${command}: --template <name> or --all (one of them)`, {
      hint: `e.g. broker admin ${command} --template deploy-lambda --reason "incident 42"`,
    });
  }
  return opts.all ? { all: true } : { template: opts.template! };
}
