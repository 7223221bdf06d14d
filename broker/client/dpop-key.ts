import { randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, importJWK, SignJWT, type CryptoKey, type JWK } from 'jose';

/**
 * The device key of a broker login (RFC 9449 DPoP): generated at `broker login`, kept only in the OS
 * keychain (its own item, apart from the refresh token, client/login-record.ts), and used by the
 * daemon to prove possession on every refresh. ES256: small proofs and fast signing on every
 * platform.
 *
 * Extractable once: WebCrypto can make a key that never leaves the process, but the Secret Service
 * and the macOS Keychain store bytes, so the key must be exported once, at login, to be kept. From
 * then on it is imported non-extractable: the daemon's CryptoKey refuses `exportKey`, and the JWK
 * text it was read from is dropped (JavaScript cannot wipe a string; it is left to the collector).
 */
const ALG = 'ES256';

export interface DpopKey {
  privateKey: CryptoKey;
  publicJwk: JWK;
}

export async function generateDpopKey(): Promise<{ key: DpopKey; privateJwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair(ALG, { extractable: true });
  const privateJwk = await exportJWK(privateKey);
  return { key: { privateKey, publicJwk: await exportJWK(publicKey) }, privateJwk };
}

export async function importDpopKey(privateJwk: JWK): Promise<DpopKey> {
  if (privateJwk.kty !== 'EC' || privateJwk.crv !== 'P-256' || !privateJwk.d) throw new TypeError('not a private EC P-256 JWK');
  const { d: _d, ...pub } = privateJwk;
  return { privateKey: (await importJWK(privateJwk, ALG, { extractable: false })) as CryptoKey, publicJwk: pub };
}

/** One proof for one request (RFC 9449 §4.2): fresh `jti`, the method and the URL without query. */
export function dpopProof(key: DpopKey, method: string, url: string): Promise<string> {
  const u = new URL(url);
  return new SignJWT({ htm: method, htu: `${u.origin}${u.pathname}` })
    .setProtectedHeader({ typ: 'dpop+jwt', alg: ALG, jwk: key.publicJwk })
    .setJti(randomUUID())
    .setIssuedAt()
    .sign(key.privateKey);
}
