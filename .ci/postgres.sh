# PostgreSQL for the usage store's tests (tests/storage): sourced by .ci/run.
# `pg_start DIR` installs Debian's server if it is missing (root: apt-get), creates a
# cluster under DIR, starts it on 127.0.0.1 on a free port and exports
#   RERANK_TEST_POSTGRES_DSN  the DSN the tests connect with
#   RERANK_TEST_POSTGRES_CTL  pg_ctl for exactly this server (the tests stop and start it)
# `pg_stop` stops exactly that server (pg_ctl -D DIR), nothing else.

pg_start() {
  local root=$1
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "PostgreSQL is missing and this is not root: apt-get install postgresql" >&2
      return 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  # The server refuses to run as root: as root, run it as Debian's `postgres` user.
  local as=()
  if [ "$(id -u)" = 0 ]; then
    as=(runuser -u postgres --)
  fi
  rm -rf "$root"
  mkdir -p "$root"
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$root"
    if ! "${as[@]}" test -w "$root"; then  # a parent folder postgres may not enter
      root=$(mktemp -d /tmp/rerank-ci-postgres.XXXXXX)
      chown postgres "$root"
      echo "postgres cannot reach the checkout; its data is in $root instead" >&2
    fi
  fi
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${as[@]}" "$bin/initdb" -D "$root/data" -U rerank --auth=trust -E UTF8 --no-sync >/dev/null
  # Loopback TCP only, no Unix socket; fsync stays on (the tests check durability).
  printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = ''\n" "$port" \
    | "${as[@]}" tee -a "$root/data/postgresql.conf" >/dev/null
  PG_CTL="${as[*]} $bin/pg_ctl -D $root/data -l $root/server.log"
  $PG_CTL start -w -t 60 >/dev/null
  export RERANK_TEST_POSTGRES_DSN="postgresql://rerank@127.0.0.1:$port/postgres"
  export RERANK_TEST_POSTGRES_CTL="$PG_CTL"
}

pg_stop() {
  if [ -n "${PG_CTL:-}" ]; then
    $PG_CTL stop -m fast -w >/dev/null || true
  fi
}
