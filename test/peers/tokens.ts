/**
 * ID tokens for negative tests of the broker's ID-token checks. Each helper makes one kind of bad
 * token; the genuine article comes from the test IdP (`idp.loginAs`), and a token signed with the
 * IdP's own key but with bad claims (wrong audience, wrong issuer, expired) from `idp.issueIdToken`.
 */
import { randomUUID } from 'node:crypto';
import { SignJWT, generateKeyPair, type JWTPayload } from 'jose';

export type IdTokenAlg = 'RS256' | 'ES256';
export type SigningKey = Parameters<SignJWT['sign']>[0];

/** What goes into an ID token. Defaults make a token that is valid in every respect but its key. */
export interface IdTokenSpec {
  issuer: string;
  audience: string | string[];
  email: string;
  groups?: string[];
  /** Default: the email (the test IdP's `sub`). */
  subject?: string;
  name?: string;
  /** Default true. */
  emailVerified?: boolean;
  /** Default 600; negative for an expired token. */
  expSecondsFromNow?: number;
  /** Default 0; positive for a token "issued in the future". */
  iatSecondsFromNow?: number;
  /** Extra claims, or overrides of the ones above. */
  claims?: Record<string, unknown>;
}

export function idTokenClaims(spec: IdTokenSpec): JWTPayload {
  const now = Math.floor(Date.now() / 1000);
  const iat = now + (spec.iatSecondsFromNow ?? 0);
  return {
    iss: spec.issuer,
    aud: spec.audience,
    sub: spec.subject ?? spec.email,
    email: spec.email,
    email_verified: spec.emailVerified ?? true,
    ...(spec.name === undefined ? {} : { name: spec.name }),
    ...(spec.groups === undefined ? {} : { groups: spec.groups }),
    iat,
    auth_time: iat,
    exp: now + (spec.expSecondsFromNow ?? 600),
    jti: randomUUID(),
    ...spec.claims,
  };
}

/** Signs `spec` with `key` (the building block; the IdP peer signs its genuine-key tokens with it). `typ` defaults to JWT. */
export async function signIdToken(spec: IdTokenSpec, key: SigningKey, header: { alg: IdTokenAlg; kid?: string; typ?: string }): Promise<string> {
  return new SignJWT(idTokenClaims(spec)).setProtectedHeader({ ...header, typ: header.typ ?? 'JWT' }).sign(key);
}

/**
 * A well-formed ID token signed with a key the IdP never published (a fresh one unless `key` is
 * given). Pass the IdP's real `kid` to model key confusion: same key id, different key.
 */
export async function forgeIdToken(spec: IdTokenSpec & { alg?: IdTokenAlg; key?: SigningKey; kid?: string }): Promise<string> {
  const alg = spec.alg ?? 'RS256';
  const key = spec.key ?? (await generateKeyPair(alg)).privateKey;
  return signIdToken(spec, key, { alg, ...(spec.kid === undefined ? {} : { kid: spec.kid }) });
}

/** An unsecured JWT (`alg: none`, empty signature, RFC 7519 §6): must never be accepted. */
export function unsignedIdToken(spec: IdTokenSpec): string {
  const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(idTokenClaims(spec))}.`;
}

/** A genuine token whose payload was edited after signing (e.g. groups widened): the signature no longer matches. */
export function tamperIdToken(token: string, changes: Record<string, unknown>): string {
  const [header, payload, signature] = token.split('.');
  if (header === undefined || payload === undefined || signature === undefined) throw new TypeError('not a compact JWS');
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>;
  return `${header}.${Buffer.from(JSON.stringify({ ...claims, ...changes })).toString('base64url')}.${signature}`;
}

/** The claims of a compact JWT, unverified (for assertions in tests only). */
export function peekClaims(token: string): Record<string, unknown> {
  const payload = token.split('.')[1];
  if (payload === undefined) throw new TypeError('not a compact JWT');
  return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>;
}
