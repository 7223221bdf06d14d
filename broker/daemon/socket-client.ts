import { connect } from 'node:net';
import type { DaemonRequest, DaemonResponse } from './protocol.js';

/**
 * One request to the daemon over its Unix socket. On the credential_process fast path, so it
 * imports nothing but node:net. Rejects with the socket error (ENOENT / ECONNREFUSED mean "no daemon")
 * or a timeout; a daemon-side failure comes back as `{ ok: false, error }`.
 */
export function daemonCall<T>(socket: string, request: DaemonRequest, timeoutMs: number): Promise<DaemonResponse<T>> {
  return new Promise((resolve, reject) => {
    const s = connect(socket);
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(Object.assign(new Error(`the broker daemon did not answer within ${Math.round(timeoutMs / 1000)}s`), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    s.setEncoding('utf8');
    s.on('connect', () => s.write(`${JSON.stringify(request)}\n`));
    s.on('data', (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      s.end();
      try {
        resolve(JSON.parse(buf.slice(0, nl)) as DaemonResponse<T>);
      } catch {
        reject(new Error('the broker daemon sent a malformed answer'));
      }
    });
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
    s.on('end', () => {
      clearTimeout(timer);
      if (!buf.includes('\n')) reject(Object.assign(new Error('the broker daemon closed the connection without answering'), { code: 'ECONNRESET' }));
    });
  });
}

/** Socket errors that mean no daemon is listening (as opposed to one that failed). */
export function isNoDaemon(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException)?.code;
  return code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'ENOTSOCK';
}
