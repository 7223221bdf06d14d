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

export interface SigningKey { kid: string; privateKey: CryptoKey; publicJwk: JWK }

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

/** `field`: where the keys are configured, for messages (the audit key has its own, `audit.signingKeys`). */
export async function loadSigningKeys(source: SigningKeySource, baseDir: string, field = 'tokens.signingKeys'): Promise<SigningKey[]> {
  if (source === 'ephemeral') return [await keyFromJwk(await generateSigningJwk(), 'ephemeral')];
  const keys: SigningKey[] = [];
  for (const [i, s] of source.entries()) {
    const where = `${field}.${i}`;
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
  if (kids.size !== keys.length) throw new BrokerError('invalid_config', `${field}: duplicate kid`);
  return keys;
}

/** A verified access token: who, and the login (refresh-token family) it was bought under, if any. */
export interface AccessClaims { principal: Principal; familyId: string | undefined }

/** A verified refresh token: whose, which family, which token of it (`jti`), bound to which key. */
export interface RefreshClaims { developer: string; familyId: string; jti: string; jkt: string; expiresAt: number }

/**
 * The broker's own tokens, ES256 JWTs signed with the first configured key and verified against all
 * (rotation by `kid`): a short-lived access token for API calls, and a refresh token that only buys
 * new access tokens. A refresh token names its login (`fam`, a refresh-token family in the store,
 * identity/logins.ts) and is bound to the device key (`cnf.jkt`, RFC 9449 §6.1); it carries no
 * groups or email: those stay in the family, server-side.
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
    private readonly ttl: { access: number },
  ) {
    this.jwks = createLocalJWKSet(this.publicJwks());
  }

  private get issuer(): string {
    return typeof this.issuerUrl === 'string' ? this.issuerUrl : this.issuerUrl();
  }

  get accessTokenTtl(): number {
    return this.ttl.access;
  }

  publicJwks(): { keys: JWK[] } {
    return { keys: this.keys.map((k) => k.publicJwk) };
  }

  private sign(claims: JWTPayload, typ: string, exp: string | number, jti: string = randomUUID()): Promise<string> {
    const key = this.keys[0]!;
    return new SignJWT(claims)
      .setProtectedHeader({ alg: ALG, kid: key.kid, typ })
      .setIssuer(this.issuer)
      .setAudience(AUDIENCE)
      .setIssuedAt()
      .setExpirationTime(exp)
      .setJti(jti)
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

  /** An access token for `p`; under a login (`familyId`), it is refused once that login is revoked. */
  accessToken(p: Principal, familyId?: string): Promise<string> {
    return this.sign({ sub: p.id, email: p.email, groups: p.groups, ...(familyId ? { fam: familyId } : {}) }, ACCESS_TYP, `${this.ttl.access}s`);
  }

  /**
   * A refresh token of a family: `jti` as recorded in the store, bound to the family's device key,
   * and expiring with the family (ms), whatever its generation: rotation never extends a login.
   */
  refreshToken(family: { id: string; developer: string; jkt: string; expiresAt: number }, jti: string): Promise<string> {
    return this.sign({ sub: family.developer, fam: family.id, cnf: { jkt: family.jkt } }, REFRESH_TYP, Math.floor(family.expiresAt / 1000), jti);
  }

  async verifyAccess(token: string): Promise<AccessClaims> {
    const payload = await this.verify(token, ACCESS_TYP);
    const groups = Array.isArray(payload.groups) ? payload.groups.filter((g): g is string => typeof g === 'string') : [];
    return {
      // `email` holds the IdP-verified email or '' (id-token-verifier.ts); never the sub in its place.
      principal: { id: payload.sub!, email: typeof payload.email === 'string' ? payload.email : '', groups },
      familyId: typeof payload.fam === 'string' ? payload.fam : undefined,
    };
  }

  /** Signature, issuer, audience, typ and expiry of a refresh token, and the claims a refresh needs. */
  async verifyRefresh(token: string): Promise<RefreshClaims> {
    const payload = await this.verify(token, REFRESH_TYP);
    const cnf = payload.cnf as { jkt?: unknown } | undefined;
    if (typeof payload.fam !== 'string' || typeof payload.jti !== 'string' || typeof cnf?.jkt !== 'string' || typeof payload.exp !== 'number') {
      // A refresh token of a broker before logins were families (stateless): nothing to rotate.
      throw new BrokerError('unauthenticated', 'refresh token invalid or expired', {
        cause: new Error('refresh token without a family'), hint: 'run: broker login',
      });
    }
    return { developer: payload.sub!, familyId: payload.fam, jti: payload.jti, jkt: cnf.jkt, expiresAt: payload.exp * 1000 };
  }

  private async verify(token: string, typ: string): Promise<JWTPayload> {
    try {
      const { payload } = await jwtVerify(token, this.jwks, { issuer: this.issuer, audience: AUDIENCE, algorithms: [ALG], typ });
      if (typeof payload.sub !== 'string') throw new Error('sub missing');
      return payload;
    } catch (e) {
      throw new BrokerError('unauthenticated', typ === ACCESS_TYP ? 'access token invalid or expired' : 'refresh token invalid or expired', {
        cause: e,
        hint: typ === ACCESS_TYP ? undefined : 'run: broker login',
      });
    }
  }
}
