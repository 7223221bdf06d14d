# The broker service's own Vault/OpenBao policy: exactly what it needs, nothing that reads secrets.
# Attach it to the broker's login (AppRole role, JWT role, or a token for development):
#   bao policy write broker deploy/vault/broker-policy.hcl
# If you rename the token role (vault.tokenRole in the service config), rename it here too.

# Create task tokens against the token role. The role's allowed_policies decide which policies a task
# token may carry; the broker itself holds none of them.
path "auth/token/create/broker-tasks" {
  capabilities = ["update"]
}

# Revoke task tokens by accessor when a task session ends or expires, and look them up. The broker
# stores accessors, never tokens. Vault cannot scope these two paths to one role: they work on any
# accessor, which is why the broker's login must be protected like any Vault admin credential.
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}
path "auth/token/lookup-accessor" {
  capabilities = ["update"]
}

# Its own token: looked up at start (a token with the root policy is refused) and renewed when it can be.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}

# Read the token role at start and before issuing: the broker refuses to start, or to issue a task
# token, against a role that is not orphan or has no token_explicit_max_ttl of at most 12h (what caps
# renewals of its tokens), and against a role it cannot read. It also warns at start about a role
# that does not allow a template's policies, and records the role's token_explicit_max_ttl as the
# latest a renewable task token can live.
path "auth/token/roles/broker-tasks" {
  capabilities = ["read"]
}
