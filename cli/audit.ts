import type { Command } from 'commander';
import * as verify from './audit-verify.js';

export function register(program: Command): void {
  const audit = program.command('audit').description('the audit log, for the service\'s admins and auditors: verify it');
  for (const m of [verify]) m.register(audit);
}
