#!/bin/busybox sh
# The guest's /init (cargo xtask vm-test): mounts what gomaptrace needs, traces every fixture
# under /fixtures the way tests/tests/trace.rs does (start it, wait for "ready", attach, let it
# run its operations, Ctrl-C the tracer, close its stdin), then again in sampled mode (case
# name + "-sampled", kept on for two more periods so that windows open again after a
# detach), prints what the host checks, then powers off. Every line the host reads starts with "vm: ", "fixture: ", "tracer: " or
# "b64: "; kernel messages in between are ignored. The report travels gzipped and in base64,
# so that a line the console mangled fails to decode instead of passing as another number.
/bin/busybox mkdir -p /bin /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin LD_LIBRARY_PATH=/lib
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
echo "vm: kernel $(uname -r) $(uname -m)"

# wait_for FILE PATTERN SECONDS: succeeds once a line of FILE matches PATTERN.
wait_for() {
    tries=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        tries=$((tries + 1))
        [ "$tries" -gt "$(($3 * 5))" ] && return 1
        sleep 0.2
    done
}

# run_case FIXTURE MODE: MODE is exact or sampled.
run_case() {
    name=$(basename "$1")
    [ "$2" = sampled ] && name="$name-sampled"
    echo "vm: case $name"
    started=$(date +%s)
    rm -f /tmp/in /tmp/out /tmp/err /tmp/report.json
    mkfifo /tmp/in
    "$1" </tmp/in >/tmp/out &
    fixture=$!
    exec 3>/tmp/in
    ran=
    if ! wait_for /tmp/out '^ready$' 120; then
        echo "vm: problem $name: the fixture never said ready"
    else
        if [ "$2" = sampled ]; then
            /gomaptrace --pid "$fixture" --json /tmp/report.json --mode sampled \
                --window 300ms --period 1s --poll 250ms 2>/tmp/err >/dev/null &
        else
            /gomaptrace --pid "$fixture" --json /tmp/report.json 2>/tmp/err >/dev/null &
        fi
        tracer=$!
        if ! wait_for /tmp/err 'attached\|error' 300; then
            echo "vm: problem $name: gomaptrace neither attached nor failed"
        elif grep -q attached /tmp/err; then
            echo "vm: attached $name after $(($(date +%s) - started)) s"
            echo go >&3
            if wait_for /tmp/out '^done$' 300; then
                ran=yes
                [ "$2" = sampled ] && sleep 2
            else
                echo "vm: problem $name: the fixture never said done"
            fi
        fi
        kill -INT "$tracer" 2>/dev/null
        wait "$tracer"
        echo "vm: tracer-exit $name $?"
    fi
    # A fixture that ran exits by itself once its stdin closes; any other is stuck waiting.
    [ -n "$ran" ] || kill -KILL "$fixture" 2>/dev/null
    exec 3>&-
    wait "$fixture"
    echo "vm: fixture-exit $name $?"
    sed 's/^/fixture: /' /tmp/out
    sed 's/^/tracer: /' /tmp/err
    if [ -s /tmp/report.json ]; then
        echo "vm: report $name"
        gzip -c /tmp/report.json | base64 | sed 's/^/b64: /'
    fi
    echo "vm: end $name after $(($(date +%s) - started)) s"
}

for fixture in /fixtures/*; do
    run_case "$fixture" exact
done
for fixture in /fixtures/*; do
    run_case "$fixture" sampled
done
echo "vm: finished"
poweroff -f
