import type { JWK } from 'jose';
import { logoutResponse, type LoginInfo } from '../wire/service-api.js';
import { BrokerApi } from './api.js';
import { dpopProof, importDpopKey } from './dpop-key.js';

/**
 * Revokes a login on the service (`POST /v1/auth/logout`, RFC 7009-like): any refresh token of the
 * login, with a DPoP proof by its device key. From then on its refresh tokens buy nothing and its
 * access tokens are refused. Throws what the service (or the network) answered.
 */
export async function revokeLogin(serverUrl: string, refreshToken: string, deviceKey: JWK): Promise<{ revoked: boolean; login: Pick<LoginInfo, 'id' | 'expiresAt'> }> {
  const key = await importDpopKey(deviceKey);
  return new BrokerApi(serverUrl).request(
    'POST', '/v1/auth/logout', logoutResponse, { refresh_token: refreshToken }, { dpop: await dpopProof(key, 'POST', `${serverUrl}/v1/auth/logout`) },
  );
}
