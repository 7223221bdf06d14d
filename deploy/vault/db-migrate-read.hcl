# For the shipped task template policies/db-migrate.yaml: read the migration credentials of the
# application databases from the KV v2 engine mounted at secret/, and nothing else.
#   bao policy write db-migrate-read deploy/vault/db-migrate-read.hcl
# KV v2 keeps data under secret/data/ and metadata under secret/metadata/ (the CLI's
# `bao kv get -mount=secret db-migrate/checkout-api` reads secret/data/db-migrate/checkout-api).
path "secret/data/db-migrate/*" {
  capabilities = ["read"]
}
path "secret/metadata/db-migrate/*" {
  capabilities = ["read", "list"]
}
