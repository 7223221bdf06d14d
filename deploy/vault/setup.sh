#!/usr/bin/env bash
# Sets up Vault/OpenBao for the broker (docs/vault.md): the token role task tokens are created
# against, the broker's own policy, the example KV policy of policies/db-migrate.yaml, and the
# broker's own login, either JWT auth against the broker's JWKS (no Vault secret on the broker at
# all) or AppRole. Run it once as a Vault admin, with VAULT_ADDR and VAULT_TOKEN set (the `bao` CLI
# also reads BAO_ADDR/BAO_TOKEN); use VAULT_CLI=vault for HashiCorp Vault.
#
#   deploy/vault/setup.sh jwt https://broker.example.com vault-broker
#       JWT auth: Vault fetches the broker's public keys from https://broker.example.com/.well-known/jwks.json;
#       the service config then says  vault: { jwt: { role: broker, audience: vault-broker } }
#   deploy/vault/setup.sh approle /run/secrets/broker-secret-id
#       AppRole: prints the role_id for the service config and writes a secret_id to the given file
#       (mode 600), for  vault: { approle: { roleId: ..., secretId: { file: ... } } }
#
# Idempotent: re-running rewrites the same role, policies and auth settings.
set -euo pipefail
cd "$(dirname "$0")"
CLI=${VAULT_CLI:-bao}
ROLE=broker-tasks          # vault.tokenRole in the service config
method=${1:-}

# --- policies -----------------------------------------------------------------------------------
"$CLI" policy write broker broker-policy.hcl
"$CLI" policy write db-migrate-read db-migrate-read.hcl

# --- the token role -----------------------------------------------------------------------------
# allowed_policies: the only policies a task token can carry, whatever a template asks for (a
#   template asking for another fails, and nothing is created). Add a policy here when you add a
#   template that needs it.
# orphan=true: task tokens are not children of the broker's own token. A child token is revoked
#   with its parent, and the broker's token is a login with a lease (AppRole/JWT), renewed or
#   replaced every few minutes: every task token would die with it. Orphans live exactly as long as
#   the broker decides (the task session), and are revoked by accessor when it ends.
# token_explicit_max_ttl=12h: Vault caps *renewals* of role tokens by the role's explicit max TTL,
#   not by the explicit_max_ttl the broker puts on each token (token store, authRenew). 12h is the
#   longest task session, so no holder can renew a task token for longer than that.
"$CLI" write "auth/token/roles/$ROLE" @token-role-broker-tasks.json

# Whether a mount exists: output captured first (grep -q closing a pipe early would fail the
# pipeline under pipefail).
has_mount() { local list; list=$("$CLI" "$1" list -format=json); [[ $list == *"\"$2/\""* ]]; }

# --- the example secret space of policies/db-migrate.yaml ----------------------------------------
has_mount secrets secret || "$CLI" secrets enable -path=secret -version=2 kv

# --- the broker's own login -----------------------------------------------------------------------
case "$method" in
  jwt)
    broker_url=${2:?usage: setup.sh jwt <broker public URL> <audience>}
    audience=${3:?usage: setup.sh jwt <broker public URL> <audience>}
    broker_url=${broker_url%/}
    has_mount auth jwt || "$CLI" auth enable jwt
    # The broker signs a 60-second JWT about itself (iss = sub = its public URL, aud = the audience,
    # typ broker-vault-login+jwt) with the key that also signs its access tokens. The audience must
    # not be "agent-credential-broker" (that of the broker's own access tokens); the service refuses it.
    "$CLI" write auth/jwt/config jwks_url="$broker_url/.well-known/jwks.json" bound_issuer="$broker_url" jwt_supported_algs=ES256
    "$CLI" write auth/jwt/role/broker role_type=jwt user_claim=sub bound_subject="$broker_url" \
      bound_audiences="$audience" token_policies=broker token_ttl=15m token_max_ttl=1h token_type=service
    echo "service config:  vault: { jwt: { role: broker, audience: $audience }, tokenRole: $ROLE }" >&2
    ;;
  approle)
    secret_file=${2:?usage: setup.sh approle <file for the secret_id>}
    has_mount auth approle || "$CLI" auth enable approle
    "$CLI" write auth/approle/role/broker token_policies=broker token_ttl=15m token_max_ttl=1h secret_id_ttl=0 token_type=service
    role_id=$("$CLI" read -field=role_id auth/approle/role/broker/role-id)
    umask 077
    "$CLI" write -f -field=secret_id auth/approle/role/broker/secret-id > "$secret_file"
    echo "service config:  vault: { approle: { roleId: $role_id, secretId: { file: $secret_file } }, tokenRole: $ROLE }" >&2
    ;;
  '')
    echo "policies and token role written; set up the broker's login with: $0 jwt <url> <audience>  or  $0 approle <file>" >&2
    ;;
  *)
    echo "unknown login method '$method' (jwt or approle)" >&2
    exit 2
    ;;
esac
