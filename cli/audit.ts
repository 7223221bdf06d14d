import type { Command } from 'commander';
import * as verify from './audit-verify.js';
import * as show from './audit-show.js';
import * as cloudtrail from './audit-cloudtrail.js';
import * as tail from './audit-tail.js';

export function register(program: Command): void {
  const audit = program
    .command('audit')
    .description('the audit log, for the service\'s admins and auditors: verify it, the principal chain behind a credential, CloudTrail joined to task sessions, the latest records');
  for (const m of [verify, show, cloudtrail, tail]) m.register(audit);
}
