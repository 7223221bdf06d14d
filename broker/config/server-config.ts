import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { durationSchema } from '../duration.js';
import { BrokerError, type ErrorDetail } from '../errors.js';

const JWS_ALGS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;

const signingKeySchema = z.union([
  z.strictObject({ file: z.string().min(1) }),
  z.strictObject({ env: z.string().regex(/^[A-Z_][A-Z0-9_]*$/) }),
]);

/**
 * The service configuration. Security-critical settings (issuer, audience, algorithms) have no
 * defaults: a broker that guessed them would accept tokens nobody meant it to.
 */
export const serverConfigSchema = z.strictObject({
  listen: z.strictObject({
    host: z.string().default('127.0.0.1'),
    port: z.number().int().min(0).max(65535).default(8787),
  }).prefault({}),
  /** Base URL clients use; also the `iss` of broker tokens. Defaults to http://host:port. */
  publicUrl: z.url().optional(),
  policiesDir: z.string().default('policies'),
  store: z.strictObject({
    sqlite: z.string().default('broker.db'),
    /** How long a write waits for a lock before the store is declared unavailable (fail closed). */
    busyTimeoutMs: z.number().int().min(0).max(60_000).default(2000),
  }).prefault({}),
  oidc: z.strictObject({
    issuer: z.url(),
    audience: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
    algorithms: z.array(z.enum(JWS_ALGS)).min(1),
    /** The client the CLI uses for the device authorization grant (RFC 8628). */
    cliClientId: z.string().min(1),
    scopes: z.string().default('openid email profile'),
    groupsClaim: z.string().default('groups'),
    identityClaim: z.string().default('email'),
    /** Plain-http issuer allowed (loopback development IdPs only). */
    allowInsecureHttp: z.boolean().default(false),
    clockToleranceSeconds: z.number().int().min(0).max(300).default(30),
  }),
  tokens: z.strictObject({
    accessTokenTtl: durationSchema.default(600),
    refreshTokenTtl: durationSchema.default(12 * 3600),
    /**
     * Private JWKs (with `kid`) the broker signs its tokens with; the first signs, all verify, so a
     * key can be rotated in by putting it first and rotated out once its tokens have expired.
     * `ephemeral` generates one in memory at start (tokens die with the process).
     */
    signingKeys: z.union([z.literal('ephemeral'), z.array(signingKeySchema).min(1)]),
  }),
  aws: z.strictObject({
    region: z.string().min(1).default('us-east-1'),
    stsEndpoint: z.url().optional(),
    iamEndpoint: z.url().optional(),
    checkTrustAtStartup: z.boolean().default(true),
  }).prefault({}),
  limits: z.strictObject({
    /** Per-developer requests that can issue credentials, per minute. */
    issuePerMinute: z.number().int().min(1).default(30),
    /** Task sessions a developer may hold at once. */
    maxActiveSessions: z.number().int().min(1).default(20),
  }).prefault({}),
  log: z.strictObject({ level: z.enum(['debug', 'info', 'warn', 'error']).default('info') }).prefault({}),
});

export type ServerConfig = z.infer<typeof serverConfigSchema> & { baseDir: string; publicUrl: string };

export function zodDetails(error: z.ZodError, prefix = ''): ErrorDetail[] {
  return error.issues.map((i) => ({
    path: `${prefix}${i.path.length ? i.path.map(String).join('.') : '(root)'}`,
    message: i.message,
  }));
}

export function parseServerConfig(raw: unknown, baseDir: string, source = 'config'): ServerConfig {
  const parsed = serverConfigSchema.safeParse(raw);
  if (!parsed.success) {
    throw new BrokerError('invalid_config', `${source}: invalid server configuration`, {
      details: zodDetails(parsed.error, `${source}:`),
      hint: 'see "Configuration" in README.md',
    });
  }
  const c = parsed.data;
  const publicUrl = (c.publicUrl ?? `http://${c.listen.host}:${c.listen.port}`).replace(/\/$/, '');
  return {
    ...c,
    baseDir,
    publicUrl,
    policiesDir: resolve(baseDir, c.policiesDir),
    store: { ...c.store, sqlite: c.store.sqlite === ':memory:' ? ':memory:' : resolve(baseDir, c.store.sqlite) },
  };
}

export function loadServerConfig(file: string): ServerConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new BrokerError('invalid_config', `cannot read config file ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, {
      hint: 'pass an existing file with --config',
    });
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (e) {
    throw new BrokerError('invalid_config', `${file}: not valid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  return parseServerConfig(raw, dirname(resolve(file)), file);
}
