import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readdirSync, unlinkSync, writeSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { BrokerError, isBrokerError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ProcessCredentials } from '../wire/service-api.js';
import { runtimeDirProblem } from './socket.cjs';

/**
 * The container credentials endpoint of `broker exec`: the daemon serves each exec's task
 * credentials over HTTP on loopback, so the agent's AWS CLI and SDKs get refreshed credentials
 * without running a process per call (credential_process starts Node on every `aws` command).
 *
 * What the clients require of it (checked against their sources; the AWS SDKs and Tools Reference
 * Guide, "Container credential provider",
 * https://docs.aws.amazon.com/sdkref/latest/guide/feature-container-credentials.html, states the
 * same rules for every SDK):
 * - The URL is `AWS_CONTAINER_CREDENTIALS_FULL_URI`, used only when
 *   `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` is unset (that one is rooted at ECS's 169.254.170.2;
 *   `broker exec` removes it). Plain http is accepted only to loopback or the ECS/EKS link-local
 *   hosts: botocore `utils.py` ContainerMetadataFetcher._validate_allowed_url (any address with
 *   `ip_address(host).is_loopback`, or `localhost`, 169.254.170.2, 169.254.170.23, fd00:ec2::23);
 *   aws-sdk-js-v3 `packages/credential-provider-http/src/fromHttp/checkUrl.ts` (127.0.0.0/8, [::1],
 *   `localhost`, the same link-local hosts). `localhost` could resolve elsewhere (or to ::1, where
 *   we do not listen), so the URL carries the literal 127.0.0.1.
 * - The token goes verbatim as the `Authorization` header (no "Bearer " scheme). Both clients read
 *   `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` first, again on every fetch, and
 *   `AWS_CONTAINER_AUTHORIZATION_TOKEN` only without it (botocore `credentials.py`
 *   ContainerProvider._build_headers; aws-sdk-js-v3 `credential-provider-http/src/fromHttp/fromHttp.ts`,
 *   which warns when both are set). Both refuse a token containing CR or LF: the file holds the
 *   token alone, no newline.
 * - The answer is JSON with `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration` (RFC 3339), and
 *   botocore also reads `AccountId`; a non-200 answer fails the fetch (botocore quotes our body in
 *   its error; the JS SDK reads `Code` and `Message` from a 4xx body). botocore retries a non-200
 *   answer 3 times, 1 s apart; the JS SDK 3 times too.
 *
 * Each `broker exec` gets its own path (`/v1/exec/<id>/credentials`, the id is no secret) and its
 * own random token (32 bytes from the CSPRNG, compared in constant time), bound to the task
 * session it runs under: the token serves that session's credentials and nothing else, and is
 * revoked (its file removed) when the exec's connection to the daemon closes, however the exec
 * ended. The token file lives in the daemon's 0700 directory, mode 0600, one file per exec, so a
 * sandbox (not built yet) can bind that one file and the loopback port and nothing else of the
 * daemon's. No token is ever logged.
 */

/** Where the tokens live, inside the daemon's directory. */
export const TOKEN_DIR_NAME = 'exec-tokens';
const TOKEN_BYTES = 32;
const PATH_RE = /^\/v1\/exec\/([A-Za-z0-9_-]{22})\/credentials$/;

/** Where credentials come from: the daemon's cache, for one task session of a template. */
export type CredentialSource = (template: string, sessionId: string) => Promise<ProcessCredentials>;

export interface ExecRegistration {
  url: string;
  tokenFile: string;
  /** Revokes the token and removes its file (idempotent). */
  release(): void;
}

interface Registration {
  id: string;
  template: string;
  sessionId: string;
  tokenDigest: Buffer;
  tokenFile: string;
  onRevoked: () => void;
}

export interface EndpointStats { execs: number; served: number; refused: number }

export class ContainerEndpoint {
  private readonly registrations = new Map<string, Registration>();
  private listening: Promise<{ server: Server; port: number }> | undefined;
  private readonly tokenDir: string;
  readonly stats = { served: 0, refused: 0 };
  private lastRefusalLog = 0;
  private port: number | undefined;

  constructor(private readonly opts: { runtimeDir: string; credentials: CredentialSource; log: Pick<Logger, 'info' | 'warn'>; now?: () => number }) {
    this.tokenDir = join(opts.runtimeDir, TOKEN_DIR_NAME);
  }

  status(): EndpointStats & { url: string | null } {
    return { url: this.port === undefined ? null : `http://127.0.0.1:${this.port}/`, execs: this.registrations.size, ...this.stats };
  }

  /**
   * A token for one exec of `template` under session `sessionId`. `onRevoked` is called when the
   * daemon revokes it on its own (the daemon stops), so the caller can close the exec's connection.
   */
  async register(template: string, sessionId: string, onRevoked: () => void): Promise<ExecRegistration> {
    // The session must be the one the cache serves now: fail before the exec starts its command.
    await this.opts.credentials(template, sessionId);
    const { port } = await this.listen();
    const id = randomBytes(16).toString('base64url');
    const token = randomBytes(TOKEN_BYTES).toString('base64url');
    const tokenFile = join(this.tokenDir, `${id}.token`);
    // O_EXCL: never through a file or link someone put there; 0600 inside a 0700 directory.
    const fd = openSync(tokenFile, 'wx', 0o600);
    try {
      writeSync(fd, token);
    } finally {
      closeSync(fd);
    }
    const reg: Registration = { id, template, sessionId, tokenDigest: digest(token), tokenFile, onRevoked };
    this.registrations.set(id, reg);
    this.opts.log.info({ template, session: sessionId, exec: id }, 'container credentials endpoint: token issued for a broker exec');
    return { url: `http://127.0.0.1:${port}/v1/exec/${id}/credentials`, tokenFile, release: () => this.revoke(id, 'the broker exec ended') };
  }

  /** Every token revoked and its file removed; the listener closed. */
  async close(): Promise<void> {
    for (const reg of [...this.registrations.values()]) {
      this.revoke(reg.id, 'the daemon stopped');
      reg.onRevoked();
    }
    const l = this.listening;
    this.listening = undefined;
    this.port = undefined;
    if (l) {
      const { server } = await l.catch(() => ({ server: undefined }));
      if (server) {
        server.closeAllConnections();
        await new Promise<void>((r) => server.close(() => r()));
      }
    }
  }

  private revoke(id: string, why: string): void {
    const reg = this.registrations.get(id);
    if (!reg) return;
    this.registrations.delete(id);
    removeFile(reg.tokenFile);
    this.opts.log.info({ template: reg.template, session: reg.sessionId, exec: id, why }, 'container credentials endpoint: token revoked');
  }

  private listen(): Promise<{ server: Server; port: number }> {
    this.listening ??= (async () => {
      this.prepareTokenDir();
      const server = createServer((req, res) => { void this.serve(req, res); });
      // Requests are tiny and answered from memory: a client that trickles its headers is dropped.
      server.headersTimeout = 10_000;
      server.requestTimeout = 30_000;
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        // Loopback only, any free port: the SDKs accept plain http to 127.0.0.0/8 (see above).
        server.listen(0, '127.0.0.1', () => resolve());
      });
      server.unref();
      const port = (server.address() as AddressInfo).port;
      this.port = port;
      this.opts.log.info({ port }, 'container credentials endpoint listening on 127.0.0.1');
      return { server, port };
    })();
    this.listening.catch(() => { this.listening = undefined; });
    return this.listening;
  }

  /** The token directory: 0700, ours, a real directory; files a crashed daemon left are removed (their tokens died with it). */
  private prepareTokenDir(): void {
    mkdirSync(this.tokenDir, { recursive: true, mode: 0o700 });
    const problem = runtimeDirProblem(this.tokenDir);
    if (problem) throw new BrokerError('invalid_config', `refusing to write exec tokens: ${problem.problem}`, { hint: problem.hint });
    for (const f of readdirSync(this.tokenDir)) if (f.endsWith('.token')) removeFile(join(this.tokenDir, f));
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const port = (req.socket.localPort ?? 0);
    // DNS rebinding: a web page can reach 127.0.0.1 under a name it controls; the Host header then
    // names that host. The SDKs send the URL's own host, 127.0.0.1:<port>.
    if (req.headers.host !== `127.0.0.1:${port}` && req.headers.host !== '127.0.0.1') {
      return this.refuse(res, 403, 'Forbidden', 'this endpoint answers only requests addressed to 127.0.0.1');
    }
    const path = (req.url ?? '').split('?')[0]!;
    const m = PATH_RE.exec(path);
    if (!m) return send(res, 404, { Code: 'NotFound', Message: 'no such path: the credentials of a broker exec are at the URL in its AWS_CONTAINER_CREDENTIALS_FULL_URI' });
    if (req.method !== 'GET') {
      res.setHeader('Allow', 'GET');
      return send(res, 405, { Code: 'MethodNotAllowed', Message: 'only GET is answered here' });
    }
    const reg = this.registrations.get(m[1]!);
    const presented = req.headers.authorization;
    // Compared in constant time, as digests (equal lengths whatever was presented); an unknown or
    // revoked exec is compared too, against a random digest, and refused the same way.
    const expected = reg?.tokenDigest ?? digest(randomBytes(TOKEN_BYTES).toString('base64url'));
    const ok = typeof presented === 'string' && timingSafeEqual(digest(presented), expected) && reg !== undefined;
    if (!ok) return this.refuse(res, 401, 'Unauthorized', 'missing, wrong or revoked token: the token of a broker exec serves only that exec, until it ends');
    try {
      const c = await this.opts.credentials(reg.template, reg.sessionId);
      // Revoked while the credentials were fetched: nothing is handed out after the exec ended.
      if (!this.registrations.has(reg.id)) return this.refuse(res, 401, 'Unauthorized', 'missing, wrong or revoked token: the token of a broker exec serves only that exec, until it ends');
      this.stats.served++;
      send(res, 200, {
        AccessKeyId: c.AccessKeyId, SecretAccessKey: c.SecretAccessKey, Token: c.SessionToken, Expiration: c.Expiration,
        ...(c.AccountId ? { AccountId: c.AccountId } : {}),
      });
    } catch (e) {
      const err = isBrokerError(e) ? e : new BrokerError('internal', 'internal error in the broker daemon');
      const status = err.status >= 400 && err.status < 600 ? err.status : 500;
      send(res, status, { Code: err.code, Message: err.hint ? `${err.message} (${err.hint})` : err.message });
    }
  }

  private refuse(res: ServerResponse, status: number, code: string, message: string): void {
    this.stats.refused++;
    // Once a minute at most (a client in a loop must not fill the log); never what was presented.
    const now = (this.opts.now ?? Date.now)();
    if (now - this.lastRefusalLog > 60_000) {
      this.lastRefusalLog = now;
      this.opts.log.warn({ status, refused: this.stats.refused }, 'container credentials endpoint refused a request');
    }
    if (status === 401) res.setHeader('WWW-Authenticate', 'Bearer realm="broker exec"');
    send(res, status, { Code: code, Message: message });
  }
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

function send(res: ServerResponse, status: number, body: Record<string, string>): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function removeFile(path: string): void {
  try { unlinkSync(path); } catch { /* gone already */ }
}
