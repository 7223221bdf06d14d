import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import type { Command } from 'commander';
import { configureAws, defaultAwsConfigFile } from '../broker/aws-config-writer.js';
import { startClean } from '../broker/clean-start.js';
import { readCliSettings } from '../broker/client/cli-config.js';
import { callDaemon, holdDaemonCall, type HeldConnection } from '../broker/daemon/daemon-client.js';
import { BrokerError, EXEC_EXIT } from '../broker/errors.js';
import { AGENT_NAME_RE, AGENT_NAME_RULE, agentNameFrom } from '../broker/limits/names.js';
import { brokerCommand } from './configure-aws.js';
import type { StartRequest } from '../broker/daemon/protocol.js';
import { checkBreakGlass, shellWord, startConfirmed, startWords } from './confirmation.js';
import { action, collectParam, failuresExitWith, info, reportError } from './output.js';
import { checkSandbox, bwrapPath, parseBind, sandboxArgs, SANDBOX_TOKEN_FILE, SANDBOX_UNSET, type Bind } from './sandbox.js';
import { CONTAINER_MODE_OFF, CORE_DUMP_SIGNALS, CREDENTIAL_SOURCES_OFF, EXEC_CLEAN_MARK, loopbackWithoutProxy, scrubEnvironment } from './exec-env.js';

interface Options {
  param: Record<string, string>;
  ttl?: string;
  reason: string;
  agent?: string;
  env?: boolean;
  credentialProcess?: boolean;
  scrub: string[];
  verbose?: boolean;
  wait: boolean;
  confirmHere?: boolean;
  breakGlass?: boolean;
  sandbox?: boolean;
  bind: string[];
  roBind: string[];
}

/** Signals passed on to the child. SIGINT/SIGQUIT from a terminal already reach it (same process group). */
const FORWARDED: NodeJS.Signals[] = ['SIGTERM', 'SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGWINCH'];

export function register(program: Command): void {
  const exec = program
    .command('exec')
    .description('run a command (an agent) under a task session: its AWS SDKs get the task\'s credentials from the daemon\'s loopback container credentials endpoint, with a token that dies with this exec (VAULT_ADDR/VAULT_TOKEN for a Vault grant), inherited static credentials are removed; exits with the command\'s status, 125 when exec itself fails, 126 when the command cannot be run, 127 when it is not found')
    .usage('<template> [options] [--] <command> [args…]')
    .argument('<template>', 'task template; its active session is reused, or one is started')
    .argument('<command...>', 'the command and its arguments: from the first word that is not an option of exec (or after --), every word is the command\'s')
    .option('-p, --param <name=value>', 'template parameter, when a session has to be started (repeatable)', collectParam, {})
    .option('--ttl <duration>', 'task session length when one is started, e.g. 2h')
    .option('--reason <text>', 'why: recorded in the audit log', '')
    .option('--agent <name>', 'agent name for the broker:agent session tag (default: the command\'s name)')
    .option('--env', 'put the credentials themselves in the environment instead (they are NOT refreshed there; prefer the endpoint)')
    .option('--credential-process', 'use the task\'s AWS profile instead (AWS_PROFILE=broker-<template>, credential_process: a process per call) of the container credentials endpoint')
    .option('--scrub <pattern>', 'also remove environment variables matching this name pattern, * as wildcard (repeatable)', (v: string, p: string[]) => [...p, v], [] as string[])
    .option('--no-wait', 'when a new session needs a human confirmation: print the request id and exit 125 at once, without running the command')
    .option('--confirm-here', 'when a new session needs a human confirmation: confirm from this terminal (a login at the IdP with a code)')
    .option('--break-glass', 'a template that allows it: start without approvers (needs --reason; you still confirm)')
    .option('--sandbox', 'run the command in a bubblewrap sandbox: no daemon socket, D-Bus, keychain files, ~/.aws or other processes; HOME is empty, the working directory is writable, the network is shared (recommended for agents); fails with 125 where bubblewrap or user namespaces are missing')
    .option('--bind <src[:dst]>', 'with --sandbox: also bind this path read-write (repeatable)', (v: string, p: string[]) => [...p, v], [] as string[])
    .option('--ro-bind <src[:dst]>', 'with --sandbox: also bind this path read-only (repeatable)', (v: string, p: string[]) => [...p, v], [] as string[])
    .option('-v, --verbose', 'say which environment variables were removed and set (names only, never values)')
    // Commander stops at the template (so nothing of the command is taken for exec's options);
    // exec's options between the template and the command are read below.
    .passThroughOptions()
    .action(action(async (template: string, words: string[], opts: Options, self: Command) => {
      const [cmd, ...args] = commandWords(self, words);
      if (!cmd) throw new BrokerError('invalid_request', 'no command to run', { hint: `broker exec ${template} [options] [--] <command> [args…]` });
      const agent = opts.agent ?? agentNameFrom(cmd);
      if (!AGENT_NAME_RE.test(agent)) {
        throw new BrokerError('invalid_request', `--agent "${agent.slice(0, 60)}" cannot be a session tag`, { hint: AGENT_NAME_RULE });
      }
      const settings = readCliSettings();
      const patterns = [...settings.exec.scrub, ...opts.scrub];
      // Before anything holds a secret and before the daemon is asked (it may be started from here):
      // re-execute in place with the child's environment and no core dumps (clean-start.ts), so no
      // standing key stays in /proc/<this pid>/environ, readable by the agent for as long as it runs.
      // The names removed travel in the marker, for -v.
      const first = scrubEnvironment(process.env, patterns);
      const start = startClean({ env: first.env, marker: EXEC_CLEAN_MARK, note: first.removed.join(',') });
      for (const p of start.problems) info(`broker exec: warning: ${p}`);
      const removedFirst = (start.note ?? '').split(',').filter((n) => /^[A-Za-z0-9_]+$/.test(n));

      checkBreakGlass(opts.breakGlass, opts.reason);
      if (opts.env && opts.credentialProcess) {
        throw new BrokerError('invalid_request', '--env and --credential-process cannot be used together', { hint: 'pick one way to hand the agent its AWS credentials' });
      }
      if (opts.sandbox && opts.credentialProcess) {
        throw new BrokerError('invalid_request', '--sandbox and --credential-process cannot be used together', { hint: 'credential_process needs the daemon socket, which the sandbox hides; the sandbox uses the container credentials endpoint' });
      }
      if (!opts.sandbox && (opts.bind.length || opts.roBind.length)) {
        throw new BrokerError('invalid_request', '--bind and --ro-bind go with --sandbox', { hint: 'add --sandbox, or drop them' });
      }
      // Before any session is started: no sandbox, no run.
      let binds: Bind[] = [];
      if (opts.sandbox) {
        binds = [...opts.bind.map((b) => parseBind(b, false, process.cwd())), ...opts.roBind.map((b) => parseBind(b, true, process.cwd()))];
        sandboxArgs({ cwd: process.cwd(), home: process.env.HOME ?? '/', tokenFile: undefined, binds });
        checkSandbox(process.env);
      }
      const request: StartRequest = {
        template, params: opts.param, reason: opts.reason, agent, ...(opts.ttl ? { ttl: opts.ttl } : {}), ...(opts.breakGlass ? { breakGlass: true } : {}),
      };
      // An active session is reused without a confirmation; a new one may wait for a human. Ending
      // with the request pending exits 125 like every other outcome where the command did not run
      // (1–124 stay the command's own): the request id is on stdout, the rest on stderr.
      const started = await startConfirmed(() => callDaemon({ op: 'ensure', request, paramsGiven: Object.keys(opts.param).length > 0 }), request, {
        noWait: !opts.wait, confirmHere: opts.confirmHere, pendingExit: EXEC_EXIT.failed,
        resume: ['broker', 'exec', template, ...startWords(request), '--', ...[cmd, ...args].map(shellWord)].join(' '),
      });
      if (opts.verbose) info(`${started.reused ? 'reusing' : 'started'} task session ${started.session.id} (${template}) for agent ${agent}`);

      const scrubbed = scrubEnvironment(process.env, patterns);
      const env = scrubbed.env;
      const removed = [...new Set([...removedFirst, ...scrubbed.removed])].sort();
      const set: string[] = [];
      let endpoint: HeldConnection | undefined;
      const put = (k: string, v: string) => { env[k] = v; set.push(k); };
      for (const [k, v] of Object.entries(CREDENTIAL_SOURCES_OFF)) put(k, v);
      put('BROKER_SESSION', started.session.id);
      if (started.session.region !== null) {
        if (opts.env) {
          const c = await callDaemon({ op: 'credentials', task: template });
          put('AWS_ACCESS_KEY_ID', c.AccessKeyId);
          put('AWS_SECRET_ACCESS_KEY', c.SecretAccessKey);
          put('AWS_SESSION_TOKEN', c.SessionToken);
          put('AWS_CREDENTIAL_EXPIRATION', c.Expiration);
          if (!env.AWS_REGION) put('AWS_REGION', started.session.region);
          info(`broker exec: credentials in the environment expire at ${c.Expiration} and are not refreshed there`);
        } else if (opts.credentialProcess) {
          await ensureProfile(template, started.session.region);
          put('AWS_PROFILE', `broker-${template}`);
          // The JS SDK v2 reads ~/.aws/config (and so credential_process) only with this set.
          put('AWS_SDK_LOAD_CONFIG', '1');
        } else {
          // The daemon's container credentials endpoint (broker/daemon/container-endpoint.ts): no
          // process per call. The token lives as long as this connection, i.e. as this exec.
          const ep = await holdDaemonCall({ op: 'exec-endpoint', task: template, session: started.session.id });
          endpoint = ep.connection;
          ep.connection.onLost(() => info('broker exec: the broker daemon stopped: the command\'s AWS credentials endpoint is gone (run it again under broker exec)'));
          put('AWS_CONTAINER_CREDENTIALS_FULL_URI', ep.result.url);
          put('AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', ep.result.tokenFile);
          for (const [k, v] of Object.entries(CONTAINER_MODE_OFF)) put(k, v);
          // No config file, so no region from it: the task's, unless the caller chose one.
          if (!env.AWS_REGION && !env.AWS_DEFAULT_REGION) {
            put('AWS_REGION', started.session.region);
            put('AWS_DEFAULT_REGION', started.session.region);
          }
          for (const [k, v] of Object.entries(loopbackWithoutProxy(env))) put(k, v);
        }
      }
      if (started.session.vault) {
        // The one secret in a child's environment by default (--env is the explicit opt-in for AWS
        // keys): Vault clients read their token from VAULT_TOKEN (or a token helper). The daemon
        // renews this very token in place, so it stays valid for the agent until the session ends.
        const v = await callDaemon({ op: 'vault-token', task: template });
        // The OpenBao CLI prefers BAO_ADDR/BAO_NAMESPACE to the VAULT_ ones: none may point elsewhere.
        for (const k of ['VAULT_NAMESPACE', 'BAO_ADDR', 'BAO_NAMESPACE']) delete env[k];
        put('VAULT_ADDR', v.address);
        put('VAULT_TOKEN', v.token);
        if (v.namespace) put('VAULT_NAMESPACE', v.namespace);
      }
      // For `broker vault-token` and the token helper inside the agent.
      put('BROKER_TASK', template);
      // What the agent's own `broker task` calls are attributed to by default (their start requests
      // name it for whoever confirms); a claim like any other name the agent gives.
      put('BROKER_AGENT', agent);
      if (opts.verbose) {
        info(`removed: ${removed.join(', ') || '(none)'}`);
        info(`set: ${set.join(', ')}`);
      }
      let run: [string, string[]] = [cmd, args];
      if (opts.sandbox) {
        const tokenFile = env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE;
        if (tokenFile) env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE = SANDBOX_TOKEN_FILE;
        for (const k of SANDBOX_UNSET) delete env[k];
        const bw = sandboxArgs({ cwd: process.cwd(), home: env.HOME ?? '/', tokenFile, binds });
        // The kernel keyring is not namespaced: a new anonymous session keyring, so the login's key
        // (possessor-only, in the session keyring: broker/kernel-keyring.ts) is not possessed inside.
        // keyctl's "Joined session keyring" line goes to /dev/null, the command's stderr to ours.
        const inner = existsSync('/usr/bin/keyctl')
          ? ['/bin/sh', '-c', 'exec 3>&2 2>/dev/null; exec /usr/bin/keyctl session - /bin/sh -c \'exec 2>&3 3>&-; exec "$@"\' sh "$@"', 'sh', cmd, ...args]
          : [cmd, ...args];
        run = [bwrapPath(process.env), [...bw, ...inner]];
      }
      try {
        process.exitCode = await runChild(run[0], run[1], env);
      } finally {
        // The token is revoked and its file removed now (and by the kernel closing this
        // connection, had this process been killed).
        endpoint?.close();
      }
    }));
  // 1–124 (and 128+n) are the command's: every failure of exec itself is 125, whatever its error code.
  failuresExitWith(exec, EXEC_EXIT.failed);
}

/**
 * The command and its arguments, from what follows the template: exec's own options there are
 * parsed (by commander, into the command's option values) up to the first word that is not one of
 * them, or up to `--`; from there every word is the command's, untouched (`claude -p "fix"`, `aws
 * --profile p …`, a `-v` of the command's own). A word that looks like an option but is none of
 * exec's, before the command, is refused: it is more likely a mistyped option than a command.
 */
function commandWords(self: Command, words: string[]): string[] {
  const { operands, unknown } = self.parseOptions(words);
  const first = unknown[0];
  if (first === '-h' || first === '--help') self.help();
  if (first !== undefined) {
    throw new BrokerError('invalid_request', `unknown option "${first.slice(0, 60)}" before the command`, {
      hint: 'put the command after --: broker exec <template> [options] -- <command> [args…]',
    });
  }
  return operands;
}

/**
 * A command that could not be started: one line, and 127 when it does not exist (ENOENT: not on
 * PATH, no such file, or its #! interpreter missing, as sh reports it), else 126 (it exists but
 * cannot be run: EACCES for no execute permission or a directory, E2BIG, …). A file in no
 * executable format is handed to sh (libuv does as execvp(3) does), whose status is then the command's.
 */
function cannotStart(cmd: string, e: NodeJS.ErrnoException): number {
  const notFound = e.code === 'ENOENT';
  const why = notFound ? 'command not found' : e.code === 'EACCES' ? 'permission denied (not executable, or a directory)' : e.code ?? e.message;
  reportError(new BrokerError(notFound ? 'not_found' : 'invalid_request', `cannot run ${cmd}: ${why}`, {
    hint: notFound ? 'check the command name and PATH' : undefined,
  }));
  return notFound ? EXEC_EXIT.notFound : EXEC_EXIT.cannotRun;
}

/** The task's profile must exist for AWS_PROFILE to work: add it (idempotent, with a backup) if missing. */
async function ensureProfile(template: string, region: string): Promise<void> {
  const r = await configureAws({ templates: [{ name: template, region }], configFile: defaultAwsConfigFile(), dryRun: false, command: brokerCommand() });
  if (r.added.length || r.updated.length) info(`broker exec: ${r.added.length ? 'added' : 'updated'} profile broker-${template} in ${r.configFile}`);
}

/**
 * Runs the child with our stdio, passes signals on, and resolves with the exit code to use. A child
 * killed by a signal makes us die of the same signal (so a shell sees 128+n and job control works),
 * except a signal whose default action dumps core (signal(7), "Core"): raised on ourselves it would
 * dump this process's memory, which may hold the task's Vault token and (--env) AWS keys, wherever
 * the system's core pattern says (the core-size limit is 0 here, clean-start.ts; this does not rely
 * on it). Then we exit 128+n, as a shell reports such a death, and say so on stderr.
 */
function runChild(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve) => {
    const interactive = process.stdin.isTTY === true;
    // Handlers go in before the child exists: on a loaded machine the child can start, print and be
    // signalled (through us) before spawn() returns, and a signal that found no handler then would
    // kill us by its default action and orphan the child. Registered first, the signal waits for
    // the end of this synchronous block, when `child` is set.
    let child: ChildProcess | undefined;
    const forward = (sig: NodeJS.Signals) => {
      if (child && child.exitCode === null && child.signalCode === null) child.kill(sig);
    };
    const handlers = new Map<NodeJS.Signals, () => void>();
    for (const sig of FORWARDED) {
      const h = () => {
        // From a terminal, Ctrl-C/Ctrl-\ went to the whole foreground group, child included:
        // sending it again would be a second interrupt (many agents treat that as "force quit").
        if (interactive && (sig === 'SIGINT' || sig === 'SIGQUIT')) return;
        forward(sig);
      };
      handlers.set(sig, h);
      process.on(sig, h);
    }
    const cleanup = () => { for (const [sig, h] of handlers) process.off(sig, h); };
    try {
      child = spawn(cmd, args, { stdio: 'inherit', env });
    } catch (e) {
      // Node throws, rather than emitting 'error', for failures other than EACCES, ENOENT, EAGAIN,
      // EMFILE and ENFILE (E2BIG: an argument list too long for execve).
      cleanup();
      resolve(cannotStart(cmd, e as NodeJS.ErrnoException));
      return;
    }
    child.on('error', (e: NodeJS.ErrnoException) => {
      // Only a failed spawn concerns us here; a child that started reports through 'exit'.
      if (child?.pid !== undefined) return;
      cleanup();
      resolve(cannotStart(cmd, e));
    });
    child.once('exit', (code, signal) => {
      cleanup();
      if (signal && CORE_DUMP_SIGNALS.includes(signal)) {
        const code = 128 + (constants.signals[signal] ?? 0);
        info(`broker exec: ${cmd} was killed by ${signal}; exiting with ${code}`);
        resolve(code);
        return;
      }
      if (signal) {
        process.kill(process.pid, signal);
        // For a signal whose default action is not to terminate, fall back to the shell convention.
        setTimeout(() => resolve(128 + (constants.signals[signal] ?? 0)), 200);
        return;
      }
      resolve(code ?? 1);
    });
  });
}
