#!/usr/bin/env bash
# Write the compose stack's secrets into deploy/compose/*.env (git-ignored, mode 0600), with new random
# passwords and keys. Refuses to overwrite existing files: losing CARECAST_DATA_KEY makes the encrypted
# identifiers in the database unreadable, so keep a copy of carecast.env in a password manager or vault.
#
#   deploy/compose/make-env.sh [DIR]     (default: the folder of this script)
set -euo pipefail

DIR="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
for f in carecast.env postgres.env redis.env grafana.env; do
    if [[ -e "$DIR/$f" ]]; then
        echo "$DIR/$f exists; not overwriting any secret" >&2
        exit 1
    fi
done

rand() { python3 -c 'import secrets, sys; print(secrets.token_urlsafe(int(sys.argv[1])))' "$1"; }
master_key() { python3 -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())'; }

pg_password="$(rand 24)"
redis_password="$(rand 24)"

umask 077
mkdir -p "$DIR/secrets"
# Prometheus's scrape token: empty until issued (see docs/deployment-guide.md); 0644 so its user can read it.
: > "$DIR/secrets/prometheus.token"
chmod 0755 "$DIR/secrets"
chmod 0644 "$DIR/secrets/prometheus.token"
cat > "$DIR/postgres.env" <<EOT
POSTGRES_PASSWORD=$pg_password
EOT
cat > "$DIR/redis.env" <<EOT
REDIS_PASSWORD=$redis_password
EOT
cat > "$DIR/grafana.env" <<EOT
GF_SECURITY_ADMIN_PASSWORD=$(rand 18)
EOT
cat > "$DIR/carecast.env" <<EOT
CARECAST_DATA_KEY=$(master_key)
CARECAST_SECRET_KEY=$(rand 48)
CARECAST_DATABASE_URL=postgresql+psycopg://carecast:$pg_password@postgres:5432/carecast
CARECAST_QUEUE_URL=redis://:$redis_password@redis:6379/0
CARECAST_EVENTS_URL=redis://:$redis_password@redis:6379/0
EOT
echo "wrote carecast.env, postgres.env, redis.env and grafana.env in $DIR (mode 0600)"
