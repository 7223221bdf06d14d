import type { Command } from 'commander';
import * as validate from './policy-validate.js';
import * as explain from './policy-explain.js';
import * as check from './policy-check.js';
import * as test from './policy-test.js';

export function register(program: Command): void {
  const policy = program.command('policy').description('validate, explain, test and check task templates (admin)');
  for (const m of [validate, explain, test, check]) m.register(policy);
}
