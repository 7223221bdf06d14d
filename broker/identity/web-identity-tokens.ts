/**
 * The broker as an OpenID Connect issuer for AWS STS `AssumeRoleWithWebIdentity`: a JWT per issuance,
 * signed with keys of their own (never the keys of the broker's access and refresh tokens), whose
 * public half is the JWKS named by the discovery document. AWS reads `/.well-known/openid-configuration`
 * under the IAM OIDC provider's URL (the broker's public URL) and the keys at its `jwks_uri`
 * (IAM User Guide, "Create an OpenID Connect (OIDC) identity provider in IAM").
 */
import { randomUUID } from 'node:crypto';
import { SignJWT, type JWK } from 'jose';
import type { SigningKey } from './broker-tokens.js';

/**
 * ES256: among the algorithms an IAM OIDC provider verifies (RS256/384/512, ES256/384/512; IAM User
 * Guide, "Create an OpenID Connect (OIDC) identity provider in IAM"), and the broker's only key type.
 */
export const WEB_IDENTITY_ALG = 'ES256';
/** The audience STS expects for tokens of an IAM OIDC provider whose client ID list holds it. */
export const STS_AUDIENCE = 'sts.amazonaws.com';
/**
 * A token is presented to STS at once, by the broker itself; 5 minutes covers clock skew between the
 * broker and AWS and the SDK's retries, and a copied one is useless soon after.
 */
export const WEB_IDENTITY_TTL_SECONDS = 300;
/** Where the JWKS of these keys is served (the discovery document's `jwks_uri`). */
export const WEB_IDENTITY_JWKS_PATH = '/.well-known/web-identity-jwks.json';
export const DISCOVERY_PATH = '/.well-known/openid-configuration';
/**
 * Claim names from the IAM User Guide: session tags, "Passing session tags using
 * AssumeRoleWithWebIdentity" (id_session-tags.html#id_session-tags_adding-assume-role-idp): the tags in
 * `principal_tags` (each value a one-element list) and `transitive_tag_keys`, under this namespace;
 * the source identity, "Monitor and control actions taken with assumed roles"
 * (id_credentials_temp_control-access_monitor.html).
 */
export const TAGS_CLAIM = 'https://aws.amazon.com/tags';
export const SOURCE_IDENTITY_CLAIM = 'https://aws.amazon.com/source_identity';

/**
 * The `sub` of a task session's token: `task/<template>/<session id>`. The session id identifies the
 * session in CloudTrail (which logs `sub`); the template before it lets a role's trust policy accept
 * only tokens minted for its own template (`StringLike <issuer>:sub task/<template>/*`), so a token
 * for one template can never assume another template's role, even where both trust the broker.
 */
export function webIdentitySubject(template: string, sessionId: string): string {
  return `task/${template}/${sessionId}`;
}

export interface WebIdentityClaims {
  template: string;
  sessionId: string;
  /** The SourceIdentity the AssumeRole path would send. */
  sourceIdentity: string;
  tags: { Key: string; Value: string }[];
  transitiveTagKeys: string[];
}

export class WebIdentityTokens {
  constructor(
    private readonly keys: SigningKey[],
    /** The service's public URL (known once it listens when the port is 0). */
    private readonly issuerUrl: () => string,
    private readonly now: () => number = Date.now,
  ) {
    if (!keys.length) throw new TypeError('web identity needs at least one signing key');
  }

  get issuer(): string {
    return this.issuerUrl();
  }

  /** Every key verifies (rotation by `kid`, like the broker's token keys); the first signs. */
  publicJwks(): { keys: JWK[] } {
    return { keys: this.keys.map((k) => k.publicJwk) };
  }

  /**
   * OpenID Connect Discovery 1.0 §3: what AWS reads is `issuer` (must equal the tokens' `iss`) and
   * `jwks_uri`. There is no authorization endpoint: nobody logs in here, the broker mints tokens
   * about its own task sessions, so none is listed.
   */
  discovery(): Record<string, unknown> {
    const issuer = this.issuer;
    return {
      issuer,
      jwks_uri: `${issuer}${WEB_IDENTITY_JWKS_PATH}`,
      response_types_supported: ['id_token'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: [WEB_IDENTITY_ALG],
      claims_supported: ['iss', 'sub', 'aud', 'exp', 'iat', 'nbf', 'jti', TAGS_CLAIM, SOURCE_IDENTITY_CLAIM],
    };
  }

  /** The JWT for one AssumeRoleWithWebIdentity. */
  sign(c: WebIdentityClaims): Promise<string> {
    const key = this.keys[0]!;
    const now = Math.floor(this.now() / 1000);
    return new SignJWT({
      [TAGS_CLAIM]: {
        principal_tags: Object.fromEntries(c.tags.map((t) => [t.Key, [t.Value]])),
        transitive_tag_keys: c.transitiveTagKeys,
      },
      [SOURCE_IDENTITY_CLAIM]: c.sourceIdentity,
    })
      .setProtectedHeader({ alg: WEB_IDENTITY_ALG, kid: key.kid, typ: 'JWT' })
      .setIssuer(this.issuer)
      .setSubject(webIdentitySubject(c.template, c.sessionId))
      .setAudience(STS_AUDIENCE)
      .setIssuedAt(now)
      .setNotBefore(now)
      .setExpirationTime(now + WEB_IDENTITY_TTL_SECONDS)
      .setJti(randomUUID())
      .sign(key.privateKey);
  }
}
