/**
 * The daemon's wire protocol on its Unix socket: one JSON request per line, one JSON response per
 * line. Shared by the daemon and every client; types only, so it costs the fast path nothing.
 */
import type { ErrorCode, ErrorDetail } from '../errors.js';
import type { MemoryProtection } from './memory-protection.js';

export const PROTOCOL_VERSION = 1;
/** A request line larger than this is refused (no op needs more than a few hundred bytes). */
export const MAX_REQUEST_BYTES = 64 * 1024;

export interface StartRequest {
  template: string;
  params: Record<string, string>;
  reason: string;
  agent: string;
  ttl?: string | undefined;
}

export type DaemonRequest =
  | { op: 'ping' }
  | { op: 'credentials'; task: string }
  /** The task's Vault token (`broker vault-token`, `broker exec` for templates with a vault section). */
  | { op: 'vault-token'; task?: string | undefined }
  | { op: 'start'; request: StartRequest }
  /** Reuse the template's active session (its params must match, when given) or start one; `broker exec`. */
  | { op: 'ensure'; request: StartRequest; paramsGiven: boolean }
  | { op: 'status' }
  | { op: 'end'; template?: string; all?: boolean }
  | { op: 'templates' }
  | { op: 'whoami' }
  /** `broker login`/`logout` changed the keychain: read it again (or drop the login). */
  | { op: 'reload-login' }
  | { op: 'stop' };

export interface WireError {
  code: ErrorCode;
  message: string;
  hint?: string;
  details?: ErrorDetail[];
}

export type DaemonResponse<T = unknown> = { ok: true; result: T } | { ok: false; error: WireError };

export interface PingResult {
  pid: number;
  version: number;
  serverUrl: string | null;
  developer: string | null;
  startedAt: string;
  /** Whether other processes of the user are kept out of the daemon's memory (memory-protection.ts). */
  memory: MemoryProtection;
  /** How requests for credentials were answered since the daemon started. */
  stats: { credentialRequests: number; servedFromMemory: number; waitedForUpstream: number; sharedUpstream: number; upstreamIssues: number };
  /** The credentials held in memory, per task (never the secrets themselves). */
  tasks: {
    template: string; sessionId: string; credentialsExpireAt: string | null; nextRefreshAt: string | null;
    health: 'ok' | 'retrying'; refreshing: boolean; lastError: string | null;
  }[];
}
