#!/bin/sh
# Generate ./.env with a random value for every secret docker-compose.yml requires (infra/env.template).
# Refuses to overwrite an existing .env (that would lock the stack out of its own data); mode 0600.
set -eu
cd "$(dirname "$0")/.."
target=.env
if [ -e "$target" ]; then
    echo "$target exists; edit it or remove it first" >&2
    exit 1
fi
umask 077
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
while IFS= read -r line; do
    case "$line" in
        ''|'#'*) printf '%s\n' "$line" ;;
        *=) printf '%s%s\n' "$line" "$(random)" ;;
        *) printf '%s\n' "$line" ;;
    esac
done < infra/env.template > "$target"
echo "wrote $target (keep it out of version control; docker compose reads it)"
