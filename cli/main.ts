import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { EXIT_CODES } from '../broker/errors.js';
import { ownFailureExit, printJson, reportError } from './output.js';
import * as login from './login.js';
import * as logout from './logout.js';
import * as whoami from './whoami.js';
import * as task from './task.js';
import * as status from './status.js';
import * as end from './end.js';
import * as templates from './templates.js';
import * as configureAws from './configure-aws.js';
import * as configureClaude from './configure-claude.js';
import * as credentials from './credentials.js';
import * as consoleSignin from './console.js';
import * as policy from './policy.js';
import * as server from './server.js';
import * as daemon from './daemon.js';
import * as exec from './exec.js';
import * as vaultToken from './vault-token.js';
import * as requests from './requests.js';
import * as decide from './decide.js';
import * as admin from './admin.js';
import * as audit from './audit.js';

/** The installed package's version: package.json two levels above this module (dist/cli/main.js). */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  return typeof pkg.version === 'string' ? pkg.version : 'unknown';
}

/**
 * `credential-process` is dispatched by bin/broker.cjs before this module loads (fast path); it is
 * registered here too so that it shows in `broker --help`.
 */
export function buildProgram(): Command {
  const program = new Command('broker')
    .description('Short-lived, narrowly scoped, attributable cloud credentials for AI coding agents')
    .version(packageVersion())
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ writeOut: (s) => process.stdout.write(s), writeErr: (s) => process.stderr.write(s) })
    // Options of a command come before its subcommand; lets `broker exec` leave its command's options alone.
    .enablePositionalOptions()
    .exitOverride();
  for (const m of [login, logout, whoami, templates, task, exec, requests, decide, vaultToken, status, end, configureAws, configureClaude, credentials, consoleSignin, daemon, policy, admin, audit, server]) m.register(program);
  program
    .command('credential-process')
    .description('print AWS credential_process JSON for a task session (used from ~/.aws/config)')
    .requiredOption('--task <template>', 'task template whose session supplies the credentials');
  return program;
}

/** The command a command line runs: its leading words that name subcommands (`policy explain`). */
export function commandOf(program: Command, words: string[]): Command {
  let command = program;
  for (const w of words) {
    const sub = command.commands.find((c) => c.name() === w || c.aliases().includes(w));
    if (!sub) break;
    command = sub;
  }
  return command;
}

/** Did the command line ask that command for --json (before any `--`)? For errors met while parsing it. */
function wantsJson(command: Command, words: string[]): boolean {
  if (!command.options.some((o) => o.long === '--json')) return false;
  const end = words.indexOf('--');
  return (end < 0 ? words : words.slice(0, end)).includes('--json');
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    // Failed while parsing the command line (an action's own failures are reported by action()).
    const words = argv.slice(2);
    const command = commandOf(program, words);
    const json = wantsJson(command, words);
    if (!(e instanceof CommanderError)) {
      // An option's parser refused its value (e.g. --param without "=").
      process.exitCode = reportError(e, { json, command });
      return;
    }
    // Commander exits 0 for --help and --version, and 1 for every usage error, which it has
    // already printed: a usage error is invalid_request here, as it is for the commands' own checks.
    if (e.exitCode === 0) {
      process.exitCode = 0;
      return;
    }
    if (json) {
      printJson({ error: { code: 'invalid_request', message: e.message.replace(/^error: /, ''), hint: `see: ${commandPath(command)} --help` } });
    }
    process.exitCode = ownFailureExit(command) ?? EXIT_CODES.invalid_request;
  }
}

function commandPath(command: Command): string {
  const names: string[] = [];
  for (let c: Command | null = command; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}
