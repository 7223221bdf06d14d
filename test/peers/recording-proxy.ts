import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface RecordedRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  /** The AWS action and its parameters, decoded from a Query (form) or JSON body. */
  action: string | undefined;
  params: Record<string, string>;
  /** The upstream's answer body, once it is complete (the secrets scans look for what STS issued). */
  response?: string;
}

function decode(body: string, headers: RecordedRequest['headers']): { action: string | undefined; params: Record<string, string> } {
  const type = String(headers['content-type'] ?? '');
  if (type.includes('x-www-form-urlencoded')) {
    const params = Object.fromEntries(new URLSearchParams(body));
    return { action: params.Action, params };
  }
  if (type.includes('json') && body) {
    const target = String(headers['x-amz-target'] ?? '');
    const flat: Record<string, string> = {};
    const walk = (v: unknown, prefix: string) => {
      if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(x, prefix ? `${prefix}.${k}` : k);
      else flat[prefix] = String(v);
    };
    walk(JSON.parse(body), '');
    return { action: target.split('.').pop(), params: flat };
  }
  return { action: undefined, params: {} };
}

export type RequestHook = (r: RecordedRequest) => void | Promise<void>;

/**
 * A transparent HTTP proxy in front of moto that records every request as it went on the wire, so
 * tests can assert what the broker asked of STS (moto itself ignores Tags and SourceIdentity).
 */
export async function startRecordingProxy(target: string): Promise<{
  url: string; requests: RecordedRequest[]; setTarget(url: string): void; onRequest(hook: RequestHook | undefined): void; stop(): Promise<void>;
}> {
  let t = new URL(target);
  const requests: RecordedRequest[] = [];
  let hook: RequestHook | undefined;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const text = body.toString('utf8');
      const recorded: RecordedRequest = { method: req.method ?? '', path: req.url ?? '', headers: req.headers, body: text, ...decode(text, req.headers) };
      requests.push(recorded);
      void Promise.resolve(hook?.(recorded)).then(() => forward(body, recorded), () => { res.writeHead(502); res.end(); });
    });
    const forward = (body: Buffer, recorded: RecordedRequest) => {
      const upstream = httpRequest(
        { host: t.hostname, port: t.port, method: req.method, path: req.url, headers: { ...req.headers, host: t.host } },
        (up) => {
          res.writeHead(up.statusCode ?? 502, up.headers);
          const answer: Buffer[] = [];
          up.on('data', (c: Buffer) => answer.push(c));
          up.on('end', () => { recorded.response = Buffer.concat(answer).toString('utf8'); });
          up.pipe(res);
        },
      );
      upstream.on('error', () => { res.writeHead(502); res.end(); });
      upstream.end(body);
    };
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    /** Points the proxy at another upstream (a restarted peer on a new port). */
    setTarget(url: string) { t = new URL(url); },
    /**
     * Runs `hook` on every request once recorded and before it is forwarded (the peer answers after
     * the hook settles): a test can change the world at the exact moment the broker has called STS.
     */
    onRequest(h: RequestHook | undefined) { hook = h; },
    stop: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

/** The AssumeRole calls among recorded requests, parameters decoded. */
export function assumeRoleCalls(requests: RecordedRequest[]): Record<string, string>[] {
  return requests.filter((r) => r.action === 'AssumeRole').map((r) => r.params);
}

/**
 * The secrets STS handed out in the recorded AssumeRole answers (Query protocol: XML), so a scan can
 * look for every credential issued during a test, not only those the test itself was shown.
 */
export function issuedSecrets(requests: RecordedRequest[]): { accessKeyId: string; secretAccessKey: string; sessionToken: string }[] {
  const field = (xml: string, name: string) => new RegExp(`<${name}>([^<]+)</${name}>`).exec(xml)?.[1];
  const out = [];
  for (const r of requests) {
    if (r.action !== 'AssumeRole' || !r.response) continue;
    const accessKeyId = field(r.response, 'AccessKeyId');
    const secretAccessKey = field(r.response, 'SecretAccessKey');
    const sessionToken = field(r.response, 'SessionToken');
    if (accessKeyId && secretAccessKey && sessionToken) out.push({ accessKeyId, secretAccessKey, sessionToken });
  }
  return out;
}
