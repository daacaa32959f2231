#!/usr/bin/env bash
# Run the example project: migrate, seed the catalogue, then the ImageKit emulator, a task worker,
# a reconcile loop and the web server, until Ctrl-C (which stops every one of them).
#
#   PY=.venv/bin/python scripts/run_example.sh [--port N] [--emulator-port N]
#
# PY             the Python interpreter with the project installed (default: python3)
# --port, PORT   web server port. Unset: 8000, or the next free port when 8000 is taken
#                (the script says which). Set: that port, or an error if it is taken.
# --emulator-port, EMULATOR_PORT   the emulator's port, chosen the same way from 8790
# SERVER         "runserver" (default) or "gunicorn"
# VAR_DIR        where the SQLite database, media and emulator state go (default ./var)
# RECONCILE_EVERY  seconds between reconcile_removals runs (default 60)
# With IMAGEKIT_PRIVATE_KEY set, no emulator is started and the real ImageKit is used (it then
# needs PUBLIC_BASE_URL to be a public https URL that reaches this server). Otherwise the ImageKit
# emulator runs as a process of its own and the app finds it through IMAGEKIT_EMULATOR_URL.
# The admin's password is made on the first run and kept in VAR_DIR/admin-password.
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PY:-python3}"
HOST=127.0.0.1
# The defaults tried first when no port is asked for (tests point them at busy ports).
DEFAULT_PORT="${DEFAULT_PORT:-8000}"
DEFAULT_EMULATOR_PORT="${DEFAULT_EMULATOR_PORT:-8790}"

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
}

while (($#)); do
    case "$1" in
        --port) PORT="${2:?--port needs a number}"; shift 2 ;;
        --port=*) PORT="${1#*=}"; shift ;;
        --emulator-port) EMULATOR_PORT="${2:?--emulator-port needs a number}"; shift 2 ;;
        --emulator-port=*) EMULATOR_PORT="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run_example.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# pick_port WHAT ASKED DEFAULT: the asked port if free (error if taken), else the default if
# free, else the next free port above it. Prints the port; says on stderr when it moved.
pick_port() {
    "$PY" - "$HOST" "$1" "$2" "$3" <<'PYEOF'
import socket, sys
host, what, asked, default = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True

if asked:
    if not asked.isdigit() or not free(int(asked)):
        sys.exit(f"error: port {asked} for the {what} is not free; choose another, or leave it "
                 f"unset to pick a free one.")
    print(asked)
    sys.exit(0)
for port in range(default, default + 100):
    if free(port):
        if port != default:
            print(f"Port {default} is taken: the {what} uses port {port}.", file=sys.stderr)
        print(port)
        sys.exit(0)
sys.exit(f"error: no free port for the {what} between {default} and {default + 99}.")
PYEOF
}

PORT="$(pick_port "web server" "${PORT:-}" "$DEFAULT_PORT")"
SERVER="${SERVER:-runserver}"
export DJANGO_SETTINGS_MODULE=example_project.settings
export PUBLIC_BASE_URL="${PUBLIC_BASE_URL:-http://$HOST:$PORT}"
export PYTHONUNBUFFERED=1
export DEBUG="${DEBUG:-true}"  # the example's settings default to off

export VAR_DIR="${VAR_DIR:-$PWD/var}"  # database, media, emulator state (gitignored)
mkdir -p "$VAR_DIR"
pids=()
cleanup() {
    trap - INT TERM EXIT
    if ((${#pids[@]})); then
        echo
        echo "stopping (${pids[*]})..."
        kill "${pids[@]}" 2>/dev/null || true
        # Give them 10 s to finish what they are doing, then insist.
        for _ in $(seq 50); do
            local alive=0 pid
            for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.2
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for_port() {  # host port what
    "$PY" - "$1" "$2" "$3" <<'PYEOF'
import socket, sys, time
host, port, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        socket.create_connection((host, port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(f"{what} did not start listening on {host}:{port}")
PYEOF
}

"$PY" manage.py migrate --noinput
"$PY" manage.py createcachetable  # the throttles' counts, shared by every process
# The banner shows the login every time, so the password made on the first run is kept (var/ is
# local and gitignored); one changed in the admin since then is not known here.
PASSWORD_FILE="$VAR_DIR/admin-password"
if [[ -s "$PASSWORD_FILE" ]]; then
    "$PY" manage.py seed_catalogue
    ADMIN_PASSWORD="$(cat "$PASSWORD_FILE")"
else
    ADMIN_PASSWORD="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(12))')"
    (umask 077 && printf '%s\n' "$ADMIN_PASSWORD" > "$PASSWORD_FILE")
    "$PY" manage.py seed_catalogue --password "$ADMIN_PASSWORD" >/dev/null
fi

if [[ -z "${IMAGEKIT_PRIVATE_KEY:-}" ]]; then
    EMULATOR_PORT="$(pick_port "ImageKit emulator" "${EMULATOR_PORT:-}" "$DEFAULT_EMULATOR_PORT")"
    export IMAGEKIT_EMULATOR_URL="http://$HOST:$EMULATOR_PORT"
    "$PY" -m imagekit_emulator --host "$HOST" --port "$EMULATOR_PORT" \
        --data-dir "$VAR_DIR/emulator" &
    pids+=($!)
    wait_for_port "$HOST" "$EMULATOR_PORT" "the ImageKit emulator"
fi

"$PY" manage.py db_worker --no-reload &
pids+=($!)

# Lost callbacks and stuck jobs are settled by reconcile_removals; in production that is a cron
# job (or a scheduler of your choice), here a loop. Its sleep and its command run in the
# background and are waited for, so that stopping the loop stops them too (nothing orphaned).
reconcile_loop() {
    local child=""
    trap '[[ -n "$child" ]] && kill "$child" 2>/dev/null && wait "$child" 2>/dev/null; exit 0' TERM INT
    while :; do
        sleep "${RECONCILE_EVERY:-60}" &
        child=$!
        wait "$child" || true
        "$PY" manage.py reconcile_removals --verbosity 0 &
        child=$!
        wait "$child" || true
    done
}
reconcile_loop &
pids+=($!)

if [[ "$SERVER" == gunicorn ]]; then
    "$PY" -m gunicorn example_project.wsgi --bind "$HOST:$PORT" --workers 2 \
        --access-logfile - &
else
    "$PY" manage.py runserver "$HOST:$PORT" --noreload &
fi
pids+=($!)
wait_for_port "$HOST" "$PORT" "the web server"

BASE="http://$HOST:$PORT"
cat <<INFO

  Example project running:
    admin login        $BASE/admin/login/
                       user admin, password $ADMIN_PASSWORD
    catalogue (admin)  $BASE/admin/catalogue/product/
    removal jobs       $BASE/admin/imagekit_bgremove/removaljob/
    demo page          $BASE/demo/
    products API       $BASE/api/products/       (token: POST username, password to $BASE/api/token/)
    jobs API           $BASE/imagekit-bgremove/api/removals/
INFO
if "$PY" -c 'import drf_spectacular' 2>/dev/null; then
    echo "    API docs           $BASE/api/docs/  (Swagger UI)   $BASE/api/redoc/  (Redoc)"
fi
if [[ -z "${IMAGEKIT_PRIVATE_KEY:-}" ]]; then
    echo "    ImageKit emulator  http://$HOST:$EMULATOR_PORT/  (state in $VAR_DIR/emulator)"
fi
echo
echo "  Other ports: ./dev run --port N --emulator-port N (or PORT=N EMULATOR_PORT=N)."
echo "  Ctrl-C stops everything."

# Stop everything as soon as any one of them exits.
wait -n 2>/dev/null || wait
