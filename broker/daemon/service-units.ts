import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BrokerError } from '../errors.js';
import { logPath } from './socket.cjs';

/**
 * `broker daemon install|uninstall`: a systemd --user unit (Linux) or a launchd agent (macOS), made
 * from the templates in deploy/ so an operator can read (or hand-install) exactly what we install.
 */
const DEPLOY = fileURLToPath(new URL('../../../deploy/', import.meta.url));
const BROKER_BIN = fileURLToPath(new URL('../../../bin/broker.cjs', import.meta.url));
const SYSTEMD_UNIT = 'agent-credential-broker.service';
const LAUNCHD_LABEL = 'dev.agent-credential-broker.daemon';

export interface UnitPlan {
  kind: 'systemd' | 'launchd';
  file: string;
  text: string;
  /** What enables (or, for uninstall, disables) it, run unless told not to. */
  enable: string[][];
  disable: string[][];
  /**
   * Directories the service manager expects to exist, created 0700 at install: launchd opens the
   * plist's StandardErrorPath itself, before the daemon runs, and does not create its directory.
   */
  directories: string[];
}

export function unitPlan(env: NodeJS.ProcessEnv = process.env, platform: NodeJS.Platform = process.platform): UnitPlan {
  const home = env.HOME || homedir();
  if (platform === 'linux') {
    const text = fill(readFileSync(join(DEPLOY, 'systemd', SYSTEMD_UNIT), 'utf8'), { NODE: systemdWord(process.execPath), BROKER_BIN: systemdWord(BROKER_BIN) });
    return {
      kind: 'systemd',
      file: join(env.XDG_CONFIG_HOME || join(home, '.config'), 'systemd', 'user', SYSTEMD_UNIT),
      text,
      enable: [['systemctl', '--user', 'daemon-reload'], ['systemctl', '--user', 'enable', '--now', SYSTEMD_UNIT]],
      disable: [['systemctl', '--user', 'disable', '--now', SYSTEMD_UNIT], ['systemctl', '--user', 'daemon-reload']],
      directories: [],
    };
  }
  if (platform === 'darwin') {
    const uid = process.getuid?.() ?? 501;
    const file = join(home, 'Library', 'LaunchAgents', `${LAUNCHD_LABEL}.plist`);
    const text = fill(readFileSync(join(DEPLOY, 'launchd', `${LAUNCHD_LABEL}.plist`), 'utf8'), { NODE: xml(process.execPath), BROKER_BIN: xml(BROKER_BIN), LOG: xml(logPath(env, platform)) });
    return {
      kind: 'launchd', file, text,
      enable: [['launchctl', 'bootstrap', `gui/${uid}`, file]],
      disable: [['launchctl', 'bootout', `gui/${uid}/${LAUNCHD_LABEL}`]],
      directories: [dirname(logPath(env, platform))],
    };
  }
  throw new BrokerError('invalid_request', `broker daemon install supports Linux (systemd) and macOS (launchd), not ${platform}`, {
    hint: 'run "broker daemon run" from your session\'s start-up instead',
  });
}

export interface StepResult { command: string; ok: boolean; output: string }

export function installUnit(plan: UnitPlan, enable: boolean): StepResult[] {
  // 0700 like the daemon wants its directory (runtime-dir.ts); mkdir applies it to every level it creates.
  for (const d of plan.directories) mkdirSync(d, { recursive: true, mode: 0o700 });
  mkdirSync(dirname(plan.file), { recursive: true, mode: 0o700 });
  writeFileSync(plan.file, plan.text, { mode: 0o644 });
  return enable ? runAll(plan.enable) : [];
}

export function uninstallUnit(plan: UnitPlan): { removed: boolean; steps: StepResult[] } {
  const steps = runAll(plan.disable);
  const removed = existsSync(plan.file);
  if (removed) rmSync(plan.file);
  return { removed, steps };
}

function runAll(commands: string[][]): StepResult[] {
  const results: StepResult[] = [];
  for (const [cmd, ...args] of commands) {
    const r = spawnSync(cmd!, args, { encoding: 'utf8', timeout: 30_000 });
    const output = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() || (r.error ? (r.error as NodeJS.ErrnoException).code ?? r.error.message : '');
    results.push({ command: [cmd, ...args].join(' '), ok: r.status === 0, output });
    if (r.status !== 0) break;
  }
  return results;
}

function fill(template: string, values: Record<string, string>): string {
  return template.replace(/@([A-Z_]+)@/g, (whole, k: string) => values[k] ?? whole);
}

/** systemd splits ExecStart on spaces unless the word is double-quoted (systemd.syntax(7)). */
function systemdWord(s: string): string {
  if (/["\\\n]/.test(s)) throw new BrokerError('invalid_config', `cannot put ${JSON.stringify(s)} in a systemd unit`, { hint: 'install node and the broker under plainer paths' });
  return /\s/.test(s) ? `"${s}"` : s;
}

function xml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
