import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import {
  createLocalJWKSet, exportJWK, generateKeyPair, importJWK, jwtVerify, SignJWT,
  type CryptoKey, type JWK, type JWTPayload,
} from 'jose';
import { randomUUID } from 'node:crypto';
import { BrokerError } from '../errors.js';
import type { Principal } from './principal.js';

/** Broker tokens are ES256 only; verification never follows a token's own `alg` (RFC 8725 §3.1). */
const ALG = 'ES256';
/** RFC 9068 §2.1 media type for access tokens; refresh tokens get their own so one can't pose as the other. */
const ACCESS_TYP = 'at+jwt';
const REFRESH_TYP = 'broker-refresh+jwt';
/**
 * The broker's login JWT for Vault's JWT auth: about the broker itself (`sub` = `iss` = its public
 * URL), for Vault's audience, with a typ of its own. It can never pass as a broker token: verify()
 * demands `at+jwt` (or the refresh typ) and the audience below, and the Vault audience must differ.
 */
const VAULT_LOGIN_TYP = 'broker-vault-login+jwt';
/** Long enough for one login round trip, short enough that a copied one is useless soon after. */
const VAULT_LOGIN_TTL_SECONDS = 60;
export const BROKER_TOKEN_AUDIENCE = 'agent-credential-broker';
const AUDIENCE = BROKER_TOKEN_AUDIENCE;

interface SigningKey { kid: string; privateKey: CryptoKey; publicJwk: JWK }

async function keyFromJwk(jwk: JWK, where: string): Promise<SigningKey> {
  if (!jwk.kid || jwk.kty !== 'EC' || jwk.crv !== 'P-256' || !jwk.d) {
    throw new BrokerError('invalid_config', `${where}: a signing key must be a private EC P-256 JWK with a "kid"`, {
      hint: 'generate one with: broker server keygen',
    });
  }
  const privateKey = (await importJWK({ ...jwk, alg: ALG }, ALG)) as CryptoKey;
  const { d: _d, ...pub } = jwk;
  return { kid: jwk.kid, privateKey, publicJwk: { ...pub, alg: ALG, use: 'sig' } };
}

export async function generateSigningJwk(kid = `broker-${new Date().toISOString().slice(0, 10)}-${randomUUID().slice(0, 8)}`): Promise<JWK> {
  const { privateKey } = await generateKeyPair(ALG, { extractable: true });
  return { ...(await exportJWK(privateKey)), kid, alg: ALG };
}

export type SigningKeySource = 'ephemeral' | ({ file: string } | { env: string })[];

export async function loadSigningKeys(source: SigningKeySource, baseDir: string): Promise<SigningKey[]> {
  if (source === 'ephemeral') return [await keyFromJwk(await generateSigningJwk(), 'ephemeral')];
  const keys: SigningKey[] = [];
  for (const [i, s] of source.entries()) {
    const where = `tokens.signingKeys.${i}`;
    let text: string | undefined;
    if ('file' in s) {
      try { text = readFileSync(resolve(baseDir, s.file), 'utf8'); } catch (e) {
        throw new BrokerError('invalid_config', `${where}: cannot read ${s.file}: ${(e as NodeJS.ErrnoException).code}`);
      }
    } else {
      text = process.env[s.env];
      if (!text) throw new BrokerError('invalid_config', `${where}: environment variable ${s.env} is not set`);
    }
    let jwk: JWK;
    try { jwk = JSON.parse(text) as JWK; } catch {
      throw new BrokerError('invalid_config', `${where}: not a JSON Web Key`);
    }
    keys.push(await keyFromJwk(jwk, where));
  }
  const kids = new Set(keys.map((k) => k.kid));
  if (kids.size !== keys.length) throw new BrokerError('invalid_config', 'tokens.signingKeys: duplicate kid');
  return keys;
}

export interface IssuedTokens { accessToken: string; refreshToken?: string; accessTokenExpiresIn: number }

/**
 * The broker's own tokens: a short-lived access token for API calls and a longer refresh token that
 * only buys new access tokens. Stateless JWTs signed with the first configured key; verified against
 * all configured keys (rotation by `kid`).
 */
export class BrokerTokens {
  private readonly jwks: ReturnType<typeof createLocalJWKSet>;

  constructor(
    private readonly keys: SigningKey[],
    /**
     * The service's public URL; a function when it is known only once the service listens (a
     * configured port 0 takes an ephemeral one), so tokens never name port 0 as their issuer.
     */
    private readonly issuerUrl: string | (() => string),
    private readonly ttl: { access: number; refresh: number },
  ) {
    this.jwks = createLocalJWKSet(this.publicJwks());
  }

  private get issuer(): string {
    return typeof this.issuerUrl === 'string' ? this.issuerUrl : this.issuerUrl();
  }

  publicJwks(): { keys: JWK[] } {
    return { keys: this.keys.map((k) => k.publicJwk) };
  }

  private sign(claims: JWTPayload, typ: string, ttl: number): Promise<string> {
    const key = this.keys[0]!;
    return new SignJWT(claims)
      .setProtectedHeader({ alg: ALG, kid: key.kid, typ })
      .setIssuer(this.issuer)
      .setAudience(AUDIENCE)
      .setIssuedAt()
      .setExpirationTime(`${ttl}s`)
      .setJti(randomUUID())
      .sign(key.privateKey);
  }

  /**
   * A short-lived JWT about the broker itself, for `POST auth/jwt/login` (OpenBao/Vault JWT auth with
   * `jwks_url` = this service's /.well-known/jwks.json and `bound_issuer` = its public URL).
   */
  signVaultLoginJwt(audience: string): Promise<string> {
    if (audience === AUDIENCE) throw new TypeError(`the Vault login audience must differ from "${AUDIENCE}"`);
    const key = this.keys[0]!;
    return new SignJWT({})
      .setProtectedHeader({ alg: ALG, kid: key.kid, typ: VAULT_LOGIN_TYP })
      .setIssuer(this.issuer)
      .setSubject(this.issuer)
      .setAudience(audience)
      .setIssuedAt()
      .setExpirationTime(`${VAULT_LOGIN_TTL_SECONDS}s`)
      .setJti(randomUUID())
      .sign(key.privateKey);
  }

  /**
   * Access token always; refresh token only when the caller proved possession of a key (`jkt`, the
   * RFC 7638 thumbprint from a DPoP proof): the refresh token is bound to it (`cnf.jkt`, RFC 9449
   * §6.1), so it is worthless on a machine without that key.
   */
  async issue(p: Principal, jkt?: string): Promise<IssuedTokens> {
    const claims = { sub: p.id, email: p.email, groups: p.groups };
    return {
      accessToken: await this.sign(claims, ACCESS_TYP, this.ttl.access),
      ...(jkt ? { refreshToken: await this.sign({ ...claims, cnf: { jkt } }, REFRESH_TYP, this.ttl.refresh) } : {}),
      accessTokenExpiresIn: this.ttl.access,
    };
  }

  /** A new access token for a refresh token presented with a DPoP proof by the key it is bound to. */
  async refresh(refreshToken: string, proofJkt: string): Promise<{ principal: Principal; accessToken: string; accessTokenExpiresIn: number }> {
    const { principal, jkt } = await this.verify(refreshToken, REFRESH_TYP);
    if (!jkt || jkt !== proofJkt) {
      throw new BrokerError('unauthenticated', 'refresh token invalid or expired', {
        cause: new Error(jkt ? 'DPoP key does not match the refresh token' : 'refresh token is not bound to a key'),
        hint: 'run: broker login',
      });
    }
    return {
      principal,
      accessToken: await this.sign({ sub: principal.id, email: principal.email, groups: principal.groups }, ACCESS_TYP, this.ttl.access),
      accessTokenExpiresIn: this.ttl.access,
    };
  }

  async verifyAccess(token: string): Promise<Principal> {
    return (await this.verify(token, ACCESS_TYP)).principal;
  }

  private async verify(token: string, typ: string): Promise<{ principal: Principal; jkt: string | undefined }> {
    try {
      const { payload } = await jwtVerify(token, this.jwks, { issuer: this.issuer, audience: AUDIENCE, algorithms: [ALG], typ });
      const groups = Array.isArray(payload.groups) ? payload.groups.filter((g): g is string => typeof g === 'string') : [];
      if (typeof payload.sub !== 'string') throw new Error('sub missing');
      const cnf = payload.cnf as { jkt?: unknown } | undefined;
      return {
        // `email` holds the IdP-verified email or '' (id-token-verifier.ts); never the sub in its place.
        principal: { id: payload.sub, email: typeof payload.email === 'string' ? payload.email : '', groups },
        jkt: typeof cnf?.jkt === 'string' ? cnf.jkt : undefined,
      };
    } catch (e) {
      throw new BrokerError('unauthenticated', typ === ACCESS_TYP ? 'access token invalid or expired' : 'refresh token invalid or expired', {
        cause: e,
        hint: typ === ACCESS_TYP ? undefined : 'run: broker login',
      });
    }
  }
}
