import { callRunningDaemon } from './daemon-client.js';

/**
 * Tells a running daemon that the login in the keychain changed (`broker login`, `broker logout`),
 * so it reads it again; a daemon that is not running reads it when it starts.
 */
export async function notifyDaemon(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  await callRunningDaemon({ op: 'reload-login' }, { env, timeoutMs: 10_000 });
}
