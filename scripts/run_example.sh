#!/usr/bin/env bash
# Run the example project: migrate, seed the catalogue, then the ImageKit emulator, a task worker
# and the web server, until Ctrl-C (which stops all three).
#
#   PY=.venv/bin/python scripts/run_example.sh
#
# PY        the Python interpreter with the project installed (default: python3)
# PORT      web server port (default 8000); EMULATOR_PORT (default 8790)
# SERVER    "runserver" (default) or "gunicorn"
# VAR_DIR   where the SQLite database, media and emulator state go (default ./var)
# With IMAGEKIT_PRIVATE_KEY set, no emulator is started and the real ImageKit is used (it then
# needs PUBLIC_BASE_URL to be a public https URL that reaches this server).
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PY:-python3}"
HOST=127.0.0.1
PORT="${PORT:-8000}"
EMULATOR_PORT="${EMULATOR_PORT:-8790}"
SERVER="${SERVER:-runserver}"
export DJANGO_SETTINGS_MODULE=example_project.settings
export PUBLIC_BASE_URL="${PUBLIC_BASE_URL:-http://$HOST:$PORT}"
export PYTHONUNBUFFERED=1

export VAR_DIR="${VAR_DIR:-$PWD/var}"  # database, media, emulator state (gitignored)
mkdir -p "$VAR_DIR"
pids=()
cleanup() {
    trap - INT TERM EXIT
    if ((${#pids[@]})); then
        echo
        echo "stopping (${pids[*]})..."
        kill "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap cleanup INT TERM EXIT

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
"$PY" manage.py seed_catalogue

if [[ -z "${IMAGEKIT_PRIVATE_KEY:-}" ]]; then
    export IMAGEKIT_EMULATOR_URL="http://$HOST:$EMULATOR_PORT"
    export IMAGEKIT_EMULATOR_AUTOSTART=false  # the one started here, not one per process
    "$PY" -m imagekit_bgremove.emulator --host "$HOST" --port "$EMULATOR_PORT" \
        --data-dir "$VAR_DIR/emulator" &
    pids+=($!)
    wait_for_port "$HOST" "$EMULATOR_PORT" "the ImageKit emulator"
fi

"$PY" manage.py db_worker --no-reload &
pids+=($!)

# Lost callbacks and stuck jobs are settled by reconcile_removals; in production that is a cron
# job (or a scheduler of your choice), here a loop.
(
    while sleep "${RECONCILE_EVERY:-60}"; do
        "$PY" manage.py reconcile_removals --verbosity 0 || true
    done
) &
pids+=($!)

if [[ "$SERVER" == gunicorn ]]; then
    "$PY" -m gunicorn example_project.wsgi --bind "$HOST:$PORT" --workers 2 \
        --access-logfile - &
else
    "$PY" manage.py runserver "$HOST:$PORT" --noreload &
fi
pids+=($!)
wait_for_port "$HOST" "$PORT" "the web server"

cat <<INFO

  Example project running:
    catalogue (admin)  http://$HOST:$PORT/admin/catalogue/product/
    admin login        http://$HOST:$PORT/admin/login/     (user "admin"; password printed above
                                                          on first run, or: manage.py seed_catalogue --password ...)
    REST API           http://$HOST:$PORT/imagekit-bgremove/api/removals/
    webhook            http://$HOST:$PORT/imagekit-bgremove/webhooks/imagekit/<token>/
INFO
if [[ -z "${IMAGEKIT_PRIVATE_KEY:-}" ]]; then
    echo "    ImageKit emulator  http://$HOST:$EMULATOR_PORT/  (state in $VAR_DIR/emulator)"
fi
echo
echo "  Ctrl-C stops everything."

# Stop everything as soon as any one of them exits (bash without `wait -n`: when all have).
wait -n 2>/dev/null || wait
