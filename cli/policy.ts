import type { Command } from 'commander';
import * as validate from './policy-validate.js';
import * as explain from './policy-explain.js';
import * as check from './policy-check.js';

export function register(program: Command): void {
  const policy = program.command('policy').description('validate, explain and check task templates (admin)');
  for (const m of [validate, explain, check]) m.register(policy);
}
