#!/bin/sh
# Creates the secrets docker compose needs, readable by the services.
#
# Why 0444: compose (without swarm) bind-mounts a file secret into the
# container as it is on the host, with the host's owner and mode; the
# `uid`, `gid` and `mode` of a secret's long syntax are ignored for file
# secrets. The services run as uid 10001 and Postgres as uid 999, neither of
# which owns files you create, so a 0600 file (what `openssl genpkey`
# writes) cannot be read in the container and userservice never starts.
# 0444 lets every local user of this machine read them: fine for a laptop;
# on a shared host use `sudo chown 10001:10001` and 0400 instead (for
# postgres_password, uid 999), or a real secret store.
set -eu
cd "$(dirname "$0")"
for f in postgres_password pgpass admin_password jwt_signing_key console_token; do
	if [ -e "$f" ]; then
		echo "deploy/secrets/$f exists already: remove the five files to start over (and 'docker compose down -v', the database keeps its password)" >&2
		exit 1
	fi
done
umask 022
pw=$(openssl rand -hex 16)
printf '%s' "$pw" >postgres_password
printf 'postgres:5432:*:postgres:%s\n' "$pw" >pgpass
openssl rand -hex 12 >admin_password
openssl genpkey -algorithm ed25519 -out jwt_signing_key
openssl rand -hex 16 >console_token
chmod 0444 postgres_password pgpass admin_password jwt_signing_key console_token
ls -l postgres_password pgpass admin_password jwt_signing_key console_token
echo "admin: admin@sagabox.local / $(cat admin_password)"
