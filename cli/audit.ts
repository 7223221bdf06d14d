import type { Command } from 'commander';
import * as show from './audit-show.js';
import * as cloudtrail from './audit-cloudtrail.js';
import * as tail from './audit-tail.js';

export function register(program: Command): void {
  const audit = program
    .command('audit')
    .description('the audit log, for the service\'s admins: the principal chain behind a credential, CloudTrail joined to task sessions, the latest records');
  for (const m of [show, cloudtrail, tail]) m.register(audit);
}
