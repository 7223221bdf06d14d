import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import { BrokerError } from '../errors.js';
import { brokerUrlProblem, shownUrl } from '../limits/urls.js';

/**
 * The CLI's own settings file (`~/.config/agent-credential-broker/config.json`): where the broker
 * service is, and what `broker exec` removes from agents' environments. Deliberately no secret ever
 * goes here; the login lives in the OS keychain.
 */
const settingsSchema = z.strictObject({
  /** https, or plain http to loopback (broker/limits/urls.ts); `broker login --server` writes it. */
  serverUrl: z.string().superRefine((url, ctx) => {
    const p = brokerUrlProblem(url);
    if (p) ctx.addIssue({ code: 'custom', message: `${shownUrl(url) ?? 'the value'} ${p.problem}; ${p.fix}, or run: broker login --server <https URL>` });
  }).optional(),
  exec: z.strictObject({
    /** Extra variable name patterns (`*` wildcard) removed from `broker exec` children, e.g. GITHUB_TOKEN. */
    scrub: z.array(z.string().regex(/^[A-Za-z0-9_*]+$/, 'a variable name pattern: letters, digits, _ and *')).default([]),
  }).prefault({}),
});

export type CliSettings = z.output<typeof settingsSchema>;
export interface CliConfig { serverUrl: string }

export function cliConfigPath(): string {
  const base = process.env.XDG_CONFIG_HOME || join(homedir(), '.config');
  return join(base, 'agent-credential-broker', 'config.json');
}

/** The settings file, validated; a missing file is the defaults, a broken one a clear error. */
export function readCliSettings(): CliSettings {
  const file = cliConfigPath();
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return settingsSchema.parse({});
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new BrokerError('invalid_config', `${file} is not valid JSON`, { hint: 'fix it, or remove it and run: broker login --server <url>' });
  }
  const r = settingsSchema.safeParse(raw);
  if (!r.success) {
    throw new BrokerError('invalid_config', `${file}: invalid settings`, {
      details: r.error.issues.map((i) => ({ path: `${file}:${i.path.join('.') || '(root)'}`, message: i.message })),
      hint: 'see "Configuration" in README.md',
    });
  }
  return r.data;
}

/**
 * Where the broker service is: $BROKER_URL, else the settings file; either way https, or plain http
 * to loopback (broker/limits/urls.ts). Every command and the daemon read the URL here.
 */
export function readCliConfig(): CliConfig | undefined {
  const env = process.env.BROKER_URL;
  if (env) return { serverUrl: checkedServerUrl(env, 'BROKER_URL') };
  const url = readCliSettings().serverUrl;
  return url ? { serverUrl: url.replace(/\/$/, '') } : undefined;
}

/**
 * A broker service URL given on the command line (`--server`) or in `BROKER_URL`, without its
 * trailing slash; a clear error naming where it came from otherwise. Never echoes a user name,
 * password or query the value may hold.
 */
export function checkedServerUrl(raw: string, from: '--server' | 'BROKER_URL'): string {
  const p = brokerUrlProblem(raw);
  if (!p) return raw.replace(/\/$/, '');
  const shown = shownUrl(raw);
  const fix = from === 'BROKER_URL' ? `${p.fix} (or unset BROKER_URL to use the URL broker login saved)` : p.fix;
  throw new BrokerError(from === '--server' ? 'invalid_request' : 'invalid_config', `${from}${shown ? ` ${shown}` : ''} ${p.problem}`, { hint: fix });
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

/** Records the service URL, keeping the other settings; atomic (temp file + rename), 0600. */
export function writeCliConfig(c: CliConfig): void {
  const file = cliConfigPath();
  let current: Record<string, unknown> = {};
  try {
    current = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch { /* new file */ }
  mkdirSync(join(file, '..'), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify({ ...current, serverUrl: c.serverUrl }, null, 2)}\n`, { mode: 0o600 });
  renameSync(tmp, file);
}
