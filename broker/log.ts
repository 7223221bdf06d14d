import { pino, stdSerializers, type Logger } from 'pino';

/**
 * Structured JSON logs on stderr. Nothing the broker logs should hold a secret in the first place
 * (it logs AccessKeyIds and Vault accessors, never the keys or tokens); redaction is the second line
 * of defence, for the object nobody meant to log.
 *
 * pino's own `redact` paths cannot say "this key at any depth" (`*.token` matches one level below
 * the top only, not `token` itself nor `a.b.token`), so every logged object, and every child
 * logger's bindings, goes through `redactSecrets`: a walk that censors by key name at any depth, in
 * arrays and inside errors.
 */

export const CENSOR = '[redacted]';

/**
 * Key names whose values are secrets, compared without case, `_` or `-` (`client_token`,
 * `clientToken`, `X-Vault-Token` alike): what the broker handles that is secret — STS credentials
 * (`SecretAccessKey`, `SessionToken`), Vault tokens and login secrets (`client_token`, `token`,
 * `secret_id`, `jwt`), OAuth tokens (`access_token`, `refresh_token`, `id_token`), HTTP headers
 * that carry them (`authorization`, `x-vault-token`, `dpop`, cookies, `x-api-key`), private keys, passwords, and
 * the environment variables `broker exec` deals with.
 */
const SECRET_KEYS = new Set([
  'token', 'clienttoken', 'accesstoken', 'refreshtoken', 'idtoken', 'sessiontoken', 'securitytoken', 'webidentitytoken',
  'secretaccesskey', 'secretkey', 'secret', 'secretid', 'clientsecret', 'jwt', 'password', 'passphrase', 'privatekey',
  'authorization', 'proxyauthorization', 'cookie', 'setcookie', 'xvaulttoken', 'dpop',
  // The API-key headers telemetry receivers take (an OTLP audit sink's headers, broker/sinks/).
  'apikey', 'xapikey', 'apitoken', 'ddapikey',
  'awssecretaccesskey', 'awssessiontoken', 'awssecuritytoken', 'vaulttoken', 'baotoken', 'awscontainerauthorizationtoken',
]);

/**
 * The private members of a JWK (RFC 7518 §6.2.2 EC `d`; §6.3.2 RSA `d`, `p`, `q`, `dp`, `dq`, `qi`,
 * `oth`; §6.4.1 symmetric `k`). `d` is censored in any object (it is the one the broker's EC keys
 * have); the others only in objects with a `kty`, since one-letter keys mean other things elsewhere.
 */
const JWK_PRIVATE_MEMBERS = new Set(['p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']);

/** Deeper than anything the broker logs; past it a value is replaced, never printed unchecked. */
const MAX_DEPTH = 12;

const normalise = (key: string) => key.toLowerCase().replace(/[^a-z0-9]/g, '');

function isSecretKey(key: string, inJwk: boolean): boolean {
  if (key === 'd' || (inJwk && JWK_PRIVATE_MEMBERS.has(key))) return true;
  return SECRET_KEYS.has(normalise(key));
}

/**
 * A copy of `value` with the value of every secret-bearing key replaced by `[redacted]`, at any
 * depth up to MAX_DEPTH. Errors become pino's usual `{type, message, stack, …}` (message and stack
 * with their causes), their own properties walked like any object. The input is never changed.
 */
export function redactSecrets<T>(value: T): T {
  return walk(value, 0, new Set()) as T;
}

function walk(value: unknown, depth: number, path: Set<object>): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (path.has(value)) return '[circular]';
  if (depth >= MAX_DEPTH) return '[too deep]';
  let v: object = value;
  if (v instanceof Error) {
    v = { ...stdSerializers.err(v) };
  } else if (typeof (v as { toJSON?: unknown }).toJSON === 'function') {
    // What JSON.stringify would print (a Date's string, a Buffer's bytes), checked like the rest.
    const json: unknown = (v as { toJSON: () => unknown }).toJSON();
    if (json === null || typeof json !== 'object') return json;
    v = json;
  }
  path.add(value);
  try {
    if (Array.isArray(v)) return v.map((x) => walk(x, depth + 1, path));
    const inJwk = typeof (v as { kty?: unknown }).kty === 'string';
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      out[k] = x !== undefined && x !== null && isSecretKey(k, inJwk) ? CENSOR : walk(x, depth + 1, path);
    }
    return out;
  } finally {
    path.delete(value);
  }
}

export function createLogger(options: { level?: string; destination?: number } = {}): Logger {
  const logger = pino(
    {
      level: options.level ?? process.env.BROKER_LOG_LEVEL ?? 'info',
      base: { service: 'broker' },
      formatters: {
        log: (object) => redactSecrets(object),
        bindings: (bindings) => redactSecrets(bindings),
      },
      // Errors were serialised (and redacted) by the walk; pino's own `err` serializer would take the
      // plain object it made for an error and serialise it again.
      serializers: { err: (e: unknown) => e },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    pino.destination({ fd: options.destination ?? 2, sync: true }),
  );
  // pino applies `formatters.bindings` to the root's own bindings only, not to a child's: redact
  // those on the way in. Children inherit this `child` from the root, so grandchildren do too.
  const child = logger.child;
  (logger as { child: unknown }).child = function (this: Logger, bindings: Record<string, unknown>, opts?: Parameters<Logger['child']>[1]) {
    return child.call(this, redactSecrets(bindings), opts);
  };
  return logger;
}

export type { Logger };
