#!/usr/bin/env bash
# The test bed's own PostgreSQL: Debian's server binaries run without
# systemd, separate from any cluster the machine has (pg_ctlcluster and
# /var/lib/postgresql are never touched).
#
#   postgres.sh start    initialise the data directory if need be, then start (no-op when running)
#   postgres.sh stop     stop it (fast shutdown: sessions are cut, data stays)
#   postgres.sh status   exit 0 when it answers, 3 otherwise
#   postgres.sh purge    stop, then delete its data directory
#   postgres.sh url      print the URL to connect with (it holds the password)
#
# It listens on 127.0.0.1 only (TCP, port $VMP_TESTBED_PG_PORT) and on a
# Unix socket in its data directory's run directory. Local socket connections
# are trusted; TCP connections log in as role `vmprovider` with a password
# made at initialisation (kept, mode 0600, beside the data directory), so
# that the URL carries a secret as a real deployment's does.
#
# The server runs as the user `postgres` (Debian's package makes it; initdb
# refuses root). Everything is under the state directory, so a second
# instance (a test that stops its own database) is this script with other
# values of the variables below.
#
# Env:
#   VMP_TESTBED_STATE      persistent directory (default /var/lib/vm-provider-testbed)
#   VMP_TESTBED_PG_DIR     this instance's directory (default $VMP_TESTBED_STATE/postgres)
#   VMP_TESTBED_PG_PORT    TCP port on 127.0.0.1 (default 55432)
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

state=${VMP_TESTBED_STATE:-/var/lib/vm-provider-testbed}
base=${VMP_TESTBED_PG_DIR:-$state/postgres}
port=${VMP_TESTBED_PG_PORT:-55432}
data=$base/data
sockdir=$base/run
pwfile=$base/password
logfile=$base/server.log
role=vmprovider

die() {
    echo "postgres.sh: $*" >&2
    exit 1
}

bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x $dir/pg_ctl ]] && { echo "$dir"; return 0; }
    done
    die "no PostgreSQL server found under /usr/lib/postgresql; run testbed/install.sh"
}

as_postgres() {
    if [[ $(id -un) == postgres ]]; then
        "$@"
    else
        runuser -u postgres -- "$@"
    fi
}

url() {
    [[ -r $pwfile ]] || die "not initialised: run postgres.sh start"
    echo "postgresql://$role:$(cat "$pwfile")@127.0.0.1:$port/postgres"
}

answers() {
    "$(bindir)/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2
}

init() {
    [[ -f $data/PG_VERSION ]] && return 0
    id postgres >/dev/null 2>&1 || die "user postgres missing: run testbed/install.sh"
    mkdir -p "$base"
    chown postgres:postgres "$base"
    chmod 0700 "$base"
    local secret
    secret=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
    (umask 077 && echo "$secret" >"$pwfile")
    local tmp
    tmp=$(mktemp)
    echo "$secret" >"$tmp"
    chown postgres "$tmp"
    as_postgres "$(bindir)/initdb" -D "$data" -U "$role" --pwfile="$tmp" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >"$base/initdb.log" 2>&1 ||
        { rm -f "$tmp"; cat "$base/initdb.log" >&2; die "initdb failed"; }
    rm -f "$tmp"
}

start() {
    if answers; then
        echo "postgres: already running ($(url | sed 's#:[^:@/]*@#:***@#'))"
        return 0
    fi
    init
    mkdir -p "$sockdir"
    chown postgres:postgres "$sockdir"
    as_postgres "$(bindir)/pg_ctl" -D "$data" -l "$logfile" -w -t 60 \
        -o "-k $sockdir -c listen_addresses=127.0.0.1 -p $port -c max_connections=200" start >/dev/null ||
        { tail -n 20 "$logfile" >&2; die "the server did not start (log: $logfile)"; }
    echo "postgres: running on 127.0.0.1:$port"
}

stop() {
    [[ -f $data/postmaster.pid ]] || return 0
    as_postgres "$(bindir)/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
}

case ${1:-} in
start) start ;;
stop) stop ;;
status)
    if answers; then
        echo "postgres: running on 127.0.0.1:$port"
    else
        echo "postgres: not running"
        exit 3
    fi
    ;;
purge)
    stop
    rm -rf "$base"
    ;;
url) url ;;
*) die "usage: postgres.sh start|stop|status|purge|url" ;;
esac
