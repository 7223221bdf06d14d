import { Command, CommanderError } from 'commander';
import { reportError } from './output.js';
import * as login from './login.js';
import * as logout from './logout.js';
import * as whoami from './whoami.js';
import * as task from './task.js';
import * as status from './status.js';
import * as end from './end.js';
import * as templates from './templates.js';
import * as configureAws from './configure-aws.js';
import * as policy from './policy.js';
import * as server from './server.js';
import * as daemon from './daemon.js';
import * as exec from './exec.js';
import * as vaultToken from './vault-token.js';

/**
 * `credential-process` is dispatched by bin/broker.cjs before this module loads (fast path); it is
 * registered here too so that it shows in `broker --help`.
 */
export function buildProgram(): Command {
  const program = new Command('broker')
    .description('Short-lived, narrowly scoped, attributable cloud credentials for AI coding agents')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ writeOut: (s) => process.stdout.write(s), writeErr: (s) => process.stderr.write(s) })
    .exitOverride();
  for (const m of [login, logout, whoami, templates, task, exec, vaultToken, status, end, configureAws, daemon, policy, server]) m.register(program);
  program
    .command('credential-process')
    .description('print AWS credential_process JSON for a task session (used from ~/.aws/config)')
    .requiredOption('--task <template>', 'task template whose session supplies the credentials');
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode;
      return;
    }
    process.exitCode = reportError(e);
  }
}
