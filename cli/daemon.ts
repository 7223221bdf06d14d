import type { Command } from 'commander';
import { startDaemonInBackground } from '../broker/daemon/autostart.js';
import { startClean } from '../broker/clean-start.js';
import { DAEMON_CLEAN_MARK, daemonEnvironment } from '../broker/daemon/daemon-env.js';
import { protectMemory } from '../broker/daemon/memory-protection.js';
import { runDaemon } from '../broker/daemon/daemon.js';
import { callRunningDaemon } from '../broker/daemon/daemon-client.js';
import type { PingResult } from '../broker/daemon/protocol.js';
import { logPath, socketPath } from '../broker/daemon/socket.cjs';
import { installUnit, uninstallUnit, unitPlan } from '../broker/daemon/service-units.js';
import { formatDuration } from '../broker/duration.js';
import { loginStoreInUse } from '../broker/keychain.js';
import { EXIT_NO } from '../broker/errors.js';
import { action, info, out, printJson } from './output.js';

export function register(program: Command): void {
  const daemon = program
    .command('daemon')
    .description('the per-user daemon that holds your login and task credentials in memory (started on demand)');

  daemon
    .command('run')
    .description('run the daemon in the foreground (what systemd/launchd and the on-demand start run)')
    .action(action(async () => {
      // First of all, before it holds anything: re-execute in place with the allowlisted environment
      // and no core dumps (clean-start.ts, daemon-env.ts), then keep other processes out of its memory
      // (after the re-exec: execve makes a process dumpable again).
      const start = startClean({ env: daemonEnvironment(process.env), marker: DAEMON_CLEAN_MARK });
      for (const p of start.problems) info(`broker daemon: warning: ${p}`);
      const memory = await protectMemory();
      if (!memory.protected) info(`broker daemon: warning: its memory is readable by your other processes: ${memory.reason}`);
      const running = await runDaemon();
      if (running) await running.stopped;
    }));

  daemon
    .command('start')
    .description('start the daemon in the background, if it is not running')
    .action(action(async () => {
      const before = await callRunningDaemon({ op: 'ping' }, { timeoutMs: 5_000 });
      if (before) {
        out(`broker daemon: already running (pid ${before.result.pid})`);
        return;
      }
      await startDaemonInBackground();
      const after = await callRunningDaemon({ op: 'ping' }, { timeoutMs: 5_000 });
      out(`broker daemon: started (pid ${after?.result.pid ?? '?'}, socket ${socketPath()})`);
    }));

  daemon
    .command('stop')
    .description('stop the daemon; the credentials it holds are dropped from memory')
    .action(action(async () => {
      const r = await callRunningDaemon({ op: 'ping' }, { timeoutMs: 5_000 });
      if (!r) {
        out('broker daemon: not running');
        return;
      }
      await callRunningDaemon({ op: 'stop' }, { timeoutMs: 10_000 });
      // Wait until it is gone, so a following start does not race it.
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline && await callRunningDaemon({ op: 'ping' }, { timeoutMs: 1_000 }).catch(() => undefined)) {
        await new Promise((res) => setTimeout(res, 50));
      }
      out(`broker daemon: stopped (pid ${r.result.pid})`);
    }));

  daemon
    .command('status')
    .description('is the daemon running, for whom, and how it answered credential requests; exit 1 when not running')
    .option('--json', 'print as JSON')
    .action(action(async (opts: { json?: boolean }) => {
      const r = await callRunningDaemon({ op: 'ping' }, { timeoutMs: 5_000 });
      const where = { socket: socketPath(), log: logPath() };
      if (opts.json) printJson(r ? { running: true, ...where, ...r.result } : { running: false, ...where });
      if (!r) {
        if (!opts.json) out(`broker daemon: not running (socket ${where.socket}); commands start it when needed`);
        process.exitCode = EXIT_NO;
        return;
      }
      if (opts.json) return;
      const p = r.result;
      const up = formatDuration(Math.floor((Date.now() - Date.parse(p.startedAt)) / 1000));
      process.stdout.write([
        `running      pid ${p.pid}, up ${up}`,
        `login        ${p.developer ? `${p.developer} at ${p.serverUrl}` : `not logged in${p.serverUrl ? ` (server ${p.serverUrl})` : ''}`}`,
        `memory       ${memoryLine(p.memory)}`,
        ...(p.loginStore ? [`login store  ${p.loginStore.label}${p.loginStore.keyring ? ` (keyring ${p.loginStore.keyring})` : ''}`] : []),
        `credentials  ${p.stats.credentialRequests} requests: ${p.stats.servedFromMemory} from memory, ${p.stats.waitedForUpstream} waited for the service (${p.stats.sharedUpstream} of them on a request already under way); ${p.stats.upstreamIssues} issued`,
        ...p.tasks.map((t) => `task         ${t.template}: credentials expire ${t.credentialsExpireAt ?? '-'}, next refresh ${t.nextRefreshAt ?? 'none needed'}${t.health === 'retrying' ? ` (retrying: ${t.lastError ?? ''})` : ''}`),
        ...(p.containerEndpoint ? [`endpoint     ${p.containerEndpoint.url ?? 'not listening (no broker exec yet)'}: ${p.containerEndpoint.execs} broker exec(s) with a token; ${p.containerEndpoint.served} served, ${p.containerEndpoint.refused} refused`] : []),
        `socket       ${where.socket}`,
        `log          ${where.log}`,
      ].join('\n') + '\n');
    }));

  daemon
    .command('install')
    .description('install the daemon as a systemd --user service (Linux) or launchd agent (macOS), from the templates in deploy/')
    .option('--dry-run', 'print the unit and where it would go; change nothing')
    .option('--no-enable', 'write the unit but do not enable or start it')
    .option('--json', 'print the result as JSON')
    .action(action(async (opts: { dryRun?: boolean; enable: boolean; json?: boolean }) => {
      const plan = unitPlan();
      // A service of the user manager has another session keyring than the login session: it would
      // not see a login kept in the kernel keyring (README "Login store").
      const store = await loginStoreInUse().catch(() => undefined);
      if (store?.kind === 'kernel-keyring' && plan.kind === 'systemd') {
        info('broker daemon: warning: your login is kept in the kernel keyring of this session, which a systemd --user service cannot read; let broker commands start the daemon instead (README "Login store")');
      }
      if (opts.dryRun) {
        if (opts.json) printJson({ dryRun: true, kind: plan.kind, file: plan.file, text: plan.text, enable: plan.enable.map((c) => c.join(' ')) });
        else process.stdout.write(`# ${plan.file}\n${plan.text}`);
        return;
      }
      const steps = installUnit(plan, opts.enable);
      if (opts.json) printJson({ kind: plan.kind, file: plan.file, steps });
      else {
        out(`wrote ${plan.file}`);
        for (const s of steps) out(`${s.ok ? 'ran' : 'FAILED'}: ${s.command}${s.ok || !s.output ? '' : ` (${s.output})`}`);
        if (!opts.enable) info(`enable it with: ${plan.enable.map((c) => c.join(' ')).join(' && ')}`);
      }
      if (steps.some((s) => !s.ok)) {
        info(`the unit is written; enable it by hand: ${plan.enable.map((c) => c.join(' ')).join(' && ')}`);
        process.exitCode = EXIT_NO;
      }
    }));

  daemon
    .command('uninstall')
    .description('stop and remove the systemd --user service or launchd agent')
    .option('--json', 'print the result as JSON')
    .action(action((opts: { json?: boolean }) => {
      const plan = unitPlan();
      const r = uninstallUnit(plan);
      if (opts.json) printJson({ kind: plan.kind, file: plan.file, ...r });
      else {
        for (const s of r.steps) out(`${s.ok ? 'ran' : 'failed (ignored)'}: ${s.command}`);
        out(r.removed ? `removed ${plan.file}` : `${plan.file} was not installed`);
      }
    }));
}

function memoryLine(m: PingResult['memory'] | undefined): string {
  // A daemon of an older version does not say.
  if (!m) return 'unknown (restart the daemon: broker daemon stop; broker daemon start)';
  return m.protected ? `protected: ${m.how}` : `NOT protected: ${m.reason}; any process running as you can read it`;
}
