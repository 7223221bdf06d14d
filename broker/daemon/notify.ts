import { callRunningDaemon } from './daemon-client.js';
import type { PingResult } from './protocol.js';

/**
 * Tells a running daemon that the login in the keychain changed (`broker login`, `broker logout`),
 * so it reads it again; a daemon that is not running reads it when it starts.
 */
export async function notifyDaemon(env: NodeJS.ProcessEnv = process.env): Promise<PingResult | undefined> {
  return (await callRunningDaemon({ op: 'reload-login' }, { env, timeoutMs: 10_000 }))?.result;
}
