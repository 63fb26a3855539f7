#!/usr/bin/env bash
# Runs a Prometheus server against the local testnet (`tallyd testnet up`), in the
# background, so `make monitor` returns at once; `make monitor-stop` stops it.
#
#   scripts/monitor.sh start|stop|status
#
# Environment:
#   MONITOR_LISTEN      address Prometheus serves on (default 127.0.0.1:9090)
#   MONITOR_DIR         pid file, log and TSDB (default ./testnet/prometheus)
#   PROMETHEUS_CONFIG   scrape config (default configs/prometheus.yml)
set -euo pipefail

cd "$(dirname "$0")/.."
LISTEN="${MONITOR_LISTEN:-127.0.0.1:9090}"
DIR="${MONITOR_DIR:-$PWD/testnet/prometheus}"
CONFIG="${PROMETHEUS_CONFIG:-$PWD/configs/prometheus.yml}"
PIDFILE="$DIR/prometheus.pid"
LOG="$DIR/prometheus.log"

# The pid in the pid file, if that process is still a prometheus (pids get reused).
running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q prometheus || return 1
  echo "$pid"
}

# HTTP GET without depending on curl (bash's /dev/tcp); prints the body.
http_get() {
  local host="${LISTEN%:*}" port="${LISTEN##*:}" path="$1"
  exec 3<>"/dev/tcp/$host/$port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$LISTEN" >&3
  sed '1,/^\r$/d' <&3
  exec 3<&-
}

install_prometheus() {
  command -v prometheus >/dev/null 2>&1 && return 0
  echo "monitor: installing Debian's prometheus package"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "monitor: need root (or sudo) to apt-get install prometheus" >&2
      exit 1
    fi
  fi
  $sudo apt-get update -qq
  # No recommends: they pull in node-exporter, which would start scraping this host.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}

start() {
  if pid="$(running_pid)"; then
    echo "monitor: Prometheus already running (pid $pid) on http://$LISTEN; 'make monitor-stop' stops it"
    exit 0
  fi
  install_prometheus
  if http_get /-/ready >/dev/null 2>&1; then
    echo "monitor: something already listens on $LISTEN (the Debian prometheus service?" >&2
    echo "         'systemctl stop prometheus'), or pick another address:" >&2
    echo "         MONITOR_LISTEN=127.0.0.1:9091 make monitor" >&2
    exit 1
  fi
  if command -v promtool >/dev/null 2>&1; then
    promtool check config "$CONFIG" >/dev/null
  fi
  mkdir -p "$DIR/data"
  # setsid + every stream redirected: make's shell must not wait on Prometheus's
  # output, and Ctrl-C in this terminal must not reach it.
  setsid prometheus \
    --config.file="$CONFIG" \
    --storage.tsdb.path="$DIR/data" \
    --storage.tsdb.retention.time=2d \
    --web.listen-address="$LISTEN" \
    --web.enable-lifecycle \
    </dev/null >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 50); do
    if http_get /-/ready 2>/dev/null | grep -q Ready; then
      break
    fi
    if ! running_pid >/dev/null; then
      echo "monitor: Prometheus exited; last lines of $LOG:" >&2
      tail -n 20 "$LOG" >&2
      rm -f "$PIDFILE"
      exit 1
    fi
    sleep 0.2
  done
  if ! http_get /-/ready 2>/dev/null | grep -q Ready; then
    echo "monitor: Prometheus (pid $(cat "$PIDFILE")) is not ready after 10 s; see $LOG" >&2
    exit 1
  fi
  cat <<EOF
monitor: Prometheus is running (pid $(cat "$PIDFILE")), scraping every node of the local
         testnet every 5 s (config $CONFIG).
  UI       http://$LISTEN
  targets  http://$LISTEN/targets   (all five 'up' once 'tallyd testnet up' runs)
  data     $DIR/data   log $LOG
  stop     make monitor-stop

Example queries (paste into the UI's expression box):
  tally_block_height                                   height per node
  rate(tally_txs_committed_total[1m])                  committed TPS per node
  histogram_quantile(0.99, sum by (le) (rate(tally_block_interval_seconds_bucket[1m])))
  sum by (reason) (rate(tally_mempool_rejections_total[5m]))
  histogram_quantile(0.99, sum by (le, route) (rate(tally_rpc_request_duration_seconds_bucket[1m])))
  tally_peers                                          connected peers per node

Grafana: import configs/grafana/tally-dashboard.json and pick this Prometheus
(http://$LISTEN) as its data source; see configs/README.md.
EOF
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    echo "monitor: Prometheus is not running"
    rm -f "$PIDFILE"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      echo "monitor: Prometheus (pid $pid) stopped"
      return 0
    fi
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  echo "monitor: Prometheus (pid $pid) killed after 10 s"
}

status() {
  if pid="$(running_pid)"; then
    echo "monitor: Prometheus running (pid $pid) on http://$LISTEN"
  else
    echo "monitor: Prometheus is not running"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
