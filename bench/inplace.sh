#!/bin/sh
# The in-place update that the usual Django + Gunicorn + Supervisor guides give, run
# literally, for the benchmark (bench/release.py) to compare djangoapp.release with:
#
#   inplace.sh TAG hup|restart
#
# In the checkout $INPLACE_DIR (a `git clone` of the app's repository) with the
# virtualenv $INPLACE_VENV: git fetch, git checkout TAG, pip install -U -r
# requirements.txt, manage.py migrate, manage.py collectstatic, then a HUP to Gunicorn
# (`supervisorctl signal HUP`) or a restart (`supervisorctl restart`) of the
# Supervisor program $INPLACE_PROGRAM. manage.py runs with the app's environment
# ($INPLACE_ENV_FILE, through the formula's envrun). The proxy variables, if any,
# come from the caller's environment. Stops at the first failing command.
#
# Each step's wall time goes to stdout as `STEP <name> <seconds>`.
set -eu

tag="${1:?usage: inplace.sh TAG hup|restart}"
mode="${2:?usage: inplace.sh TAG hup|restart}"
dir="${INPLACE_DIR:?}"
venv="${INPLACE_VENV:?}"
program="${INPLACE_PROGRAM:?}"
env_file="${INPLACE_ENV_FILE:?}"
envrun="${INPLACE_ENVRUN:-/usr/local/lib/djangoapp/envrun}"

case "$mode" in
    hup | restart) ;;
    *)
        echo "inplace.sh: mode must be hup or restart, not '$mode'" >&2
        exit 2
        ;;
esac

clock() { date +%s.%N; }
lap_start="$(clock)"
lap() {
    now="$(clock)"
    echo "STEP $1 $(echo "$now - $lap_start" | awk '{ print $1 - $3 }')"
    lap_start="$now"
}

cd "$dir"
git fetch --quiet --tags origin
lap fetch
git checkout --quiet "$tag"
lap checkout
"$venv/bin/pip" install --quiet --disable-pip-version-check -U -r requirements.txt
lap pip_install
"$envrun" "$env_file" "$venv/bin/python" manage.py migrate --noinput >/dev/null
lap migrate
"$envrun" "$env_file" "$venv/bin/python" manage.py collectstatic --noinput >/dev/null
lap collectstatic
if [ "$mode" = hup ]; then
    supervisorctl signal HUP "$program" >/dev/null
    lap hup
else
    supervisorctl restart "$program" >/dev/null
    lap restart
fi
