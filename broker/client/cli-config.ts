import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { BrokerError } from '../errors.js';

/**
 * The CLI's own settings: just where the broker service is. Deliberately no secret ever goes here;
 * the refresh token lives in the OS keychain.
 */
export interface CliConfig { serverUrl: string }

export function cliConfigPath(): string {
  const base = process.env.XDG_CONFIG_HOME || join(homedir(), '.config');
  return join(base, 'agent-credential-broker', 'config.json');
}

export function readCliConfig(): CliConfig | undefined {
  const env = process.env.BROKER_URL;
  if (env) return { serverUrl: env.replace(/\/$/, '') };
  try {
    const c = JSON.parse(readFileSync(cliConfigPath(), 'utf8')) as Partial<CliConfig>;
    return typeof c.serverUrl === 'string' ? { serverUrl: c.serverUrl } : undefined;
  } catch {
    return undefined;
  }
}

export function requireCliConfig(): CliConfig {
  const c = readCliConfig();
  if (!c) {
    throw new BrokerError('not_logged_in', 'no broker service configured', {
      hint: 'run: broker login --server <url>   (or set BROKER_URL)',
    });
  }
  return c;
}

export function writeCliConfig(c: CliConfig): void {
  const file = cliConfigPath();
  mkdirSync(join(file, '..'), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(c, null, 2)}\n`, { mode: 0o600 });
  renameSync(tmp, file);
}
