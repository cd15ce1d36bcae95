#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker+controller) for development and tests.
#
#   dev/kafka/kafka.sh start|stop|status|restart|logs|clean|classpath|tool NAME [ARGS...]
#   dev/kafka/kafka.sh cluster start|stop|status|start-broker|stop-broker|kill-broker|restart-broker ...
#
# Jars come from $KAFKA_HOME/libs when KAFKA_HOME is set, otherwise they are resolved once with
# Maven (dev/kafka/pom.xml) into dev/kafka/.cache/lib. See dev/kafka/README.md.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
CACHE_DIR="$SCRIPT_DIR/.cache"
LIB_DIR="$CACHE_DIR/lib"
LIB_MARKER="$LIB_DIR/.resolved"
POM="$SCRIPT_DIR/pom.xml"
BROKER_LOG4J="$SCRIPT_DIR/log4j2.properties"
TOOLS_LOG4J="$SCRIPT_DIR/log4j2-tools.properties"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
HOST=127.0.0.1

die() { echo "kafka: error: $*" >&2; exit 1; }
note() { echo "kafka: $*" >&2; }

usage() {
  cat <<'EOF'
usage: dev/kafka/kafka.sh COMMAND [ARGS...]

commands:
  start              start the broker in the background and wait until it answers (idempotent)
  stop               stop the broker (SIGTERM, SIGKILL after KAFKA_STOP_TIMEOUT s); data is kept
  restart            stop + start
  status             exit 0 and print "running ..." if up, else exit 3 ("not running")
  logs [-f] [-n N]   show (or follow) the broker's server.log
  clean              stop and delete the run dir (data, logs, config)
  classpath          print the Java classpath holding the Kafka jars (resolving them if needed)
  tool NAME [ARGS]   run a Kafka CLI tool against this broker; NAME is one of
                     topics, consumer-groups, configs, consumer-perf, producer-perf, get-offsets,
                     or a fully-qualified class name. --bootstrap-server is added if not given.

cluster commands (one KRaft controller + KAFKA_CLUSTER_BROKERS brokers, each its own process):
  cluster start                 start the controller and every broker; wait until all are ready
  cluster stop                  stop every broker (controlled shutdown), then the controller
  cluster status                one line per node; exit 0 if all run, else 3
  cluster bootstrap             print the bootstrap servers (127.0.0.1:P1,127.0.0.1:P2,...)
  cluster start-broker ID...    start broker(s) ID (1..N) and wait until ready
  cluster stop-broker ID...     controlled shutdown of broker(s) ID (SIGTERM, wait)
  cluster kill-broker ID...     kill -9 broker(s) ID
  cluster restart-broker ID...  stop-broker + start-broker
  cluster logs NODE [-f] [-n N] NODE is controller or a broker ID
  cluster clean                 stop and delete the cluster dir
  cluster tool NAME [ARGS]      like tool, against the cluster's bootstrap servers

environment:
  KAFKA_PORT (9092)  KAFKA_CONTROLLER_PORT (PORT+1)  KAFKA_RUN_DIR (dev/kafka/.cache/run-PORT)
  KAFKA_HOME  KAFKA_HEAP_OPTS (-Xmx512m -Xms256m)  KAFKA_OPTS  KAFKA_START_TIMEOUT (90)
  KAFKA_STOP_TIMEOUT (60)  JAVA_HOME
  KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS (0: groups form at the first join, for fast tests;
                     Kafka's own default is 3000, what production brokers run with)
  KAFKA_SECURE (0)   1: also SASL_SSL (SCRAM) on PORT+2, mutual TLS on PORT+3 and SASL_PLAINTEXT
                     on PORT+4, with a CA and certificates made by dev/kafka/secure.sh in
                     RUN_DIR/tls (see that script), and PLAINTEXT on PORT+5 and PORT+6
                     advertised wrongly (broker.invalid:PORT+5, 127.0.0.1:PORT+7)
  cluster: KAFKA_CLUSTER_BROKERS (3)  KAFKA_CLUSTER_PORT (14092; broker i listens on
  PORT + (i-1)*KAFKA_CLUSTER_PORT_STEP (1000))  KAFKA_CLUSTER_CONTROLLER_PORT (PORT+1)
  KAFKA_CLUSTER_DIR (dev/kafka/.cache/cluster-PORT)  KAFKA_CLUSTER_HEAP_OPTS (-Xmx384m -Xms128m)
  KAFKA_CLUSTER_CONTROLLER_HEAP_OPTS (-Xmx192m -Xms64m)
EOF
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

PORT=${KAFKA_PORT:-9092}
is_uint "$PORT" || die "KAFKA_PORT must be a port number, got '$PORT'"
CPORT=${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}
is_uint "$CPORT" || die "KAFKA_CONTROLLER_PORT must be a port number, got '$CPORT'"
[ "$PORT" != "$CPORT" ] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ (both $PORT)"
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
GROUP_INITIAL_DELAY=${KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS:-0}
is_uint "$GROUP_INITIAL_DELAY" ||
  die "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS must be a number of ms, got '$GROUP_INITIAL_DELAY'"
is_uint "$START_TIMEOUT" || die "KAFKA_START_TIMEOUT must be a number of seconds"
STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-60}
is_uint "$STOP_TIMEOUT" || die "KAFKA_STOP_TIMEOUT must be a number of seconds"

SECURE=${KAFKA_SECURE:-0}
[ "$SECURE" = 0 ] || [ "$SECURE" = 1 ] || die "KAFKA_SECURE must be 0 or 1, got '$SECURE'"
RUN_DIR=${KAFKA_RUN_DIR:-$CACHE_DIR/run-$PORT}
case "$RUN_DIR" in /*) ;; *) RUN_DIR="$PWD/$RUN_DIR" ;; esac
RUN_DIR=${RUN_DIR%/}
DATA_DIR="$RUN_DIR/data"
LOG_DIR="$RUN_DIR/logs"
PID_FILE="$RUN_DIR/kafka.pid"
SERVER_PROPS="$RUN_DIR/server.properties"
BOOTSTRAP="$HOST:$PORT"

# ---------------------------------------------------------------------------------------------
# Java and jars

JAVA=""
find_java() {
  [ -n "$JAVA" ] && return 0
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    JAVA="$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    JAVA=$(command -v java)
  else
    die "java not found (need a JDK/JRE 17+ on PATH or JAVA_HOME)"
  fi
  local line first second major
  line=$("$JAVA" -version 2>&1 | head -n 1) || true
  read -r first second <<<"$(sed -E -n 's/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/p' <<<"$line")"
  if [ -n "${first:-}" ]; then
    major=$first
    [ "$first" != 1 ] || major=${second:-0} # "1.8.0_x" style
    [ "$major" -ge 17 ] || die "Java 17+ required, found: $line ($JAVA)"
  fi
}

CP=""
need_fetch() { [ ! -f "$LIB_MARKER" ] || [ "$POM" -nt "$LIB_MARKER" ]; }

fetch_jars() {
  command -v mvn >/dev/null 2>&1 ||
    die "mvn not found (Maven is needed once to download the Kafka jars into $LIB_DIR; or set KAFKA_HOME to an unpacked Kafka distribution)"
  mkdir -p "$CACHE_DIR"
  [ -f "$CACHE_DIR/.gitignore" ] || echo '*' >"$CACHE_DIR/.gitignore"
  # Serialise concurrent resolutions (fd 9 is closed again before anything long-lived starts).
  exec 9>"$CACHE_DIR/lib.lock"
  if command -v flock >/dev/null 2>&1; then flock -w 900 9 || die "timed out waiting for $CACHE_DIR/lib.lock"; fi
  if need_fetch; then
    local tmp="$CACHE_DIR/lib.tmp.$$" t0=$SECONDS
    rm -rf "$tmp"
    note "resolving Kafka jars with Maven into $LIB_DIR (one time) ..."
    if ! mvn -q -B -f "$POM" "$DEP_PLUGIN" -DoutputDirectory="$tmp" -DincludeScope=runtime \
      >"$CACHE_DIR/mvn.log" 2>&1; then
      tail -n 30 "$CACHE_DIR/mvn.log" >&2 || true
      rm -rf "$tmp"
      die "Maven could not resolve the Kafka jars (full output: $CACHE_DIR/mvn.log)"
    fi
    compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || { rm -rf "$tmp"; die "Maven finished but no kafka_2.13 jar in $tmp"; }
    date -u +%Y-%m-%dT%H:%M:%SZ >"$tmp/.resolved"
    rm -rf "$LIB_DIR.old"
    if [ -d "$LIB_DIR" ]; then mv "$LIB_DIR" "$LIB_DIR.old"; fi
    mv "$tmp" "$LIB_DIR"
    rm -rf "$LIB_DIR.old"
    note "resolved $(find "$LIB_DIR" -name '*.jar' | wc -l | tr -d ' ') jars in $((SECONDS - t0)) s"
  fi
  exec 9>&-
}

resolve_classpath() {
  [ -n "$CP" ] && return 0
  if [ -n "${KAFKA_HOME:-}" ]; then
    [ -d "$KAFKA_HOME/libs" ] || die "KAFKA_HOME=$KAFKA_HOME has no libs/ directory (expected an unpacked Kafka distribution)"
    compgen -G "$KAFKA_HOME/libs/kafka_*.jar" >/dev/null || die "no kafka_*.jar in $KAFKA_HOME/libs"
    CP="$KAFKA_HOME/libs/*"
  else
    if need_fetch; then fetch_jars; fi
    CP="$LIB_DIR/*"
  fi
}

# TOOL_JAVA: java command line (without class) for Kafka CLI classes, quiet logging config.
TOOL_JAVA=()
init_tool_java() {
  find_java
  resolve_classpath
  local -a opts
  read -r -a opts <<<"${KAFKA_TOOL_OPTS:-}"
  TOOL_JAVA=("$JAVA" -Xmx256m -Djava.awt.headless=true ${opts[@]+"${opts[@]}"}
    -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$CP")
}
run_tool_class() {
  [ ${#TOOL_JAVA[@]} -gt 0 ] || init_tool_java
  "${TOOL_JAVA[@]}" "$@"
}

# ---------------------------------------------------------------------------------------------
# Process helpers

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# True when the pid exists and is not a zombie.
is_alive() {
  local pid=$1 state=""
  kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/stat" ]; then
    state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null) || true
  elif command -v ps >/dev/null 2>&1; then
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || true
  fi
  case "$state" in Z* | X*) return 1 ;; esac
  return 0
}

cmdline_of() {
  if [ -r "/proc/$1/cmdline" ]; then
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
  elif command -v ps >/dev/null 2>&1; then
    ps -ww -o args= -p "$1" 2>/dev/null || true
  fi
}

# True when the pid is alive and is the broker of this run dir (guards against pid reuse).
is_our_broker() {
  local pid=$1 cmd
  is_alive "$pid" || return 1
  cmd=$(cmdline_of "$pid")
  [ -z "$cmd" ] && return 0 # cannot inspect: trust the pid file
  [[ "$cmd" == *"kafka.Kafka"* && "$cmd" == *"-Dkafka.run.dir=$RUN_DIR "* ]]
}

# Prints the pid recorded in the pid file if it is our live broker.
current_pid() {
  local pid
  [ -f "$PID_FILE" ] || return 1
  pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
  is_uint "$pid" || return 1
  is_our_broker "$pid" || return 1
  echo "$pid"
}

show_logs_tail() {
  local f
  for f in "$LOG_DIR/server.log" "$LOG_DIR/kafka.out"; do
    if [ -s "$f" ]; then
      echo "----- last 30 lines of $f -----" >&2
      tail -n 30 "$f" >&2 || true
    fi
  done
}

# SIGTERM, wait up to $STOP_TIMEOUT s, then SIGKILL.
kill_broker() {
  local pid=$1 deadline
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while is_alive "$pid"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      note "pid $pid did not exit within ${STOP_TIMEOUT} s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while is_alive "$pid"; do
        [ "$SECONDS" -lt "$deadline" ] || die "pid $pid survived SIGKILL"
        sleep 0.2
      done
      break
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
}

# ---------------------------------------------------------------------------------------------
# Commands

write_server_properties() {
  cat >"$SERVER_PROPS" <<EOF
# Generated by dev/kafka/kafka.sh on each start; edits are overwritten.
# Single-node KRaft, combined mode (broker + controller in one process).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CPORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA_DIR

# Internal topics on a single node.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Test friendliness.
group.initial.rebalance.delay.ms=$GROUP_INITIAL_DELAY
log.cleaner.backoff.ms=1000
auto.create.topics.enable=false
num.partitions=1
EOF
  if [ "$SECURE" = 1 ]; then
    "$SCRIPT_DIR/secure.sh" certs "$RUN_DIR/tls"
    "$SCRIPT_DIR/secure.sh" properties "$RUN_DIR/tls" "$HOST" "$PORT" >>"$SERVER_PROPS"
  fi
}

format_storage() {
  local cluster_id t0=$SECONDS
  cluster_id=$(run_tool_class kafka.tools.StorageTool random-uuid 2>"$LOG_DIR/format.log") ||
    { cat "$LOG_DIR/format.log" >&2; die "kafka.tools.StorageTool random-uuid failed"; }
  cluster_id=$(tr -d '[:space:]' <<<"$cluster_id")
  local -a scram=()
  # Secure mode: SCRAM users exist from the first start (see secure.sh).
  [ "$SECURE" != 1 ] || mapfile -t scram < <("$SCRIPT_DIR/secure.sh" scram-args)
  if ! run_tool_class kafka.tools.StorageTool format -t "$cluster_id" -c "$SERVER_PROPS" \
    ${scram[@]+"${scram[@]}"} >>"$LOG_DIR/format.log" 2>&1; then
    cat "$LOG_DIR/format.log" >&2
    die "formatting $DATA_DIR failed (see above)"
  fi
  note "formatted $DATA_DIR (cluster id $cluster_id) in $((SECONDS - t0)) s"
}

start_failed() {
  echo "kafka: error: $1" >&2
  show_logs_tail
  exit 1
}

# Wait until the broker answers a metadata request; on failure print logs and exit non-zero.
wait_ready() {
  local pid=$1 deadline=$((SECONDS + START_TIMEOUT)) remaining check_log="$LOG_DIR/ready-check.log"
  local -a limit=()
  : >"$check_log"
  while ! port_open "$PORT"; do
    is_alive "$pid" || start_failed "broker process $pid exited during startup"
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill_broker "$pid" >/dev/null 2>&1 || true
      start_failed "broker did not open $BOOTSTRAP within ${START_TIMEOUT} s (process stopped)"
    fi
    sleep 0.2
  done
  [ ${#TOOL_JAVA[@]} -gt 0 ] || init_tool_java
  while :; do
    is_alive "$pid" || start_failed "broker process $pid exited during startup"
    remaining=$((deadline - SECONDS))
    if [ "$remaining" -le 0 ]; then
      kill_broker "$pid" >/dev/null 2>&1 || true
      start_failed "broker on $BOOTSTRAP did not answer a metadata request within ${START_TIMEOUT} s (process stopped; checks in $check_log)"
    fi
    [ "$remaining" -le 30 ] || remaining=30
    limit=()
    if command -v timeout >/dev/null 2>&1; then limit=(timeout "$remaining"); fi
    if ${limit[@]+"${limit[@]}"} "${TOOL_JAVA[@]}" org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "$BOOTSTRAP" --list >>"$check_log" 2>&1; then
      break
    fi
    sleep 0.5
  done
}

# Launch kafka.Kafka for the node described by the globals (RUN_DIR, LOG_DIR, PID_FILE,
# SERVER_PROPS) with heap options $1; sets LAUNCHED_PID once the pid file names the JVM.
LAUNCHED_PID=""
launch_jvm() {
  local -a heap perf extra launcher=()
  read -r -a heap <<<"$1"
  read -r -a perf <<<"${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
  read -r -a extra <<<"${KAFKA_OPTS:-}"
  command -v nohup >/dev/null 2>&1 && launcher+=(nohup)
  command -v setsid >/dev/null 2>&1 && launcher+=(setsid)
  # Header lines so a failed start never shows an older run's log tail as its own.
  echo "===== $(date -u +%Y-%m-%dT%H:%M:%SZ) kafka.sh start ($BOOTSTRAP) =====" | tee -a "$LOG_DIR/server.log" >"$LOG_DIR/kafka.out"
  # The inner bash records its own pid and then execs java, so the pid file names the JVM
  # whether or not setsid had to fork.
  # shellcheck disable=SC2016 # $$ etc. expand in the inner shell
  ${launcher[@]+"${launcher[@]}"} bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    "$JAVA" "${heap[@]}" "${perf[@]}" ${extra[@]+"${extra[@]}"} \
    -Dlog4j2.configurationFile="$BROKER_LOG4J" -Dkafka.logs.dir="$LOG_DIR" \
    -Dkafka.run.dir="$RUN_DIR" -cp "$CP" kafka.Kafka "$SERVER_PROPS" \
    </dev/null >>"$LOG_DIR/kafka.out" 2>&1 8>&- &
  local waited=0 pid=""
  while :; do
    pid=$(cat "$PID_FILE" 2>/dev/null) || pid=""
    is_uint "$pid" && break
    waited=$((waited + 1))
    [ "$waited" -lt 100 ] || start_failed "launcher wrote no pid to $PID_FILE within 10 s"
    sleep 0.1
  done
  LAUNCHED_PID=$pid
}

cmd_start() {
  init_tool_java
  local pid t0=$SECONDS
  mkdir -p "$RUN_DIR"
  # Concurrent starts on one run dir queue up here; the later ones then find it running.
  # (fd 8 is not passed on to the broker JVM, see the launch below.)
  exec 8>"$RUN_DIR/.start.lock"
  if command -v flock >/dev/null 2>&1; then
    flock -w $((START_TIMEOUT + 120)) 8 || die "timed out waiting for another start ($RUN_DIR/.start.lock)"
  fi
  if pid=$(current_pid); then
    if port_open "$PORT"; then
      echo "kafka: already running on $BOOTSTRAP (pid $pid, logs $LOG_DIR/server.log)"
      return 0
    fi
    note "broker pid $pid is already starting; waiting for it"
  else
    rm -f "$PID_FILE"
    port_open "$PORT" && die "port $PORT on $HOST is already in use by another process (not the broker of $RUN_DIR)"
    port_open "$CPORT" && die "controller port $CPORT on $HOST is already in use by another process"
    mkdir -p "$DATA_DIR" "$LOG_DIR"
    write_server_properties
    [ -f "$DATA_DIR/meta.properties" ] || format_storage

    launch_jvm "${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
    pid=$LAUNCHED_PID
  fi
  wait_ready "$pid"
  echo "kafka: running on $BOOTSTRAP (pid $pid, logs $LOG_DIR/server.log)"
  note "ready after $((SECONDS - t0)) s"
}

cmd_stop() {
  local pid
  if ! pid=$(current_pid); then
    rm -f "$PID_FILE" 2>/dev/null || true
    echo "kafka: not running (run dir $RUN_DIR)"
    return 0
  fi
  local t0=$SECONDS
  kill_broker "$pid"
  echo "kafka: stopped (pid $pid) in $((SECONDS - t0)) s; data kept in $DATA_DIR"
}

cmd_status() {
  local pid
  if pid=$(current_pid); then
    if port_open "$PORT"; then
      echo "kafka: running on $BOOTSTRAP (pid $pid, run dir $RUN_DIR)"
      return 0
    fi
    echo "kafka: not running (pid $pid alive but $BOOTSTRAP not answering; starting?)"
    return 3
  fi
  echo "kafka: not running (run dir $RUN_DIR)"
  return 3
}

cmd_logs() {
  local follow=0 lines=100
  while [ $# -gt 0 ]; do
    case "$1" in
      -f | --follow) follow=1 ;;
      -n) shift; lines=${1:-100} ;;
      *) die "logs: unknown option '$1' (use -f, -n N)" ;;
    esac
    shift
  done
  local f="$LOG_DIR/server.log"
  [ -f "$f" ] || die "no log file $f (broker never started with this run dir?)"
  if [ "$follow" = 1 ]; then exec tail -n "$lines" -F "$f"; fi
  tail -n "$lines" "$f"
}

cmd_clean() {
  cmd_stop
  [ -d "$RUN_DIR" ] || { echo "kafka: nothing to clean ($RUN_DIR does not exist)"; return 0; }
  case "$RUN_DIR" in
    "" | / | "$HOME" | "$SCRIPT_DIR" | "$CACHE_DIR") die "refusing to delete $RUN_DIR" ;;
  esac
  if [ -n "$(ls -A "$RUN_DIR")" ] && [ ! -f "$SERVER_PROPS" ] && [ ! -d "$DATA_DIR" ] && [ ! -d "$LOG_DIR" ]; then
    die "refusing to delete $RUN_DIR: it does not look like a kafka.sh run dir"
  fi
  rm -rf "$RUN_DIR"
  echo "kafka: removed $RUN_DIR"
}

has_arg() {
  local want=$1 a; shift
  for a in "$@"; do
    case "$a" in "$want" | "$want="*) return 0 ;; esac
  done
  return 1
}

cmd_tool() {
  [ $# -ge 1 ] || die "tool: missing NAME (topics, consumer-groups, configs, consumer-perf, producer-perf, get-offsets or a class name)"
  local name=$1 cls; shift
  local -a args=("$@")
  case "$name" in
    topics) cls=org.apache.kafka.tools.TopicCommand ;;
    consumer-groups) cls=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    configs) cls=kafka.admin.ConfigCommand ;;
    consumer-perf) cls=org.apache.kafka.tools.ConsumerPerformance ;;
    producer-perf) cls=org.apache.kafka.tools.ProducerPerformance ;;
    get-offsets) cls=org.apache.kafka.tools.GetOffsetShell ;;
    *.*) cls=$name ;;
    *)
      echo "kafka: error: unknown tool '$name' (known: topics, consumer-groups, configs, consumer-perf, producer-perf, get-offsets; or a fully-qualified class name)" >&2
      exit 2
      ;;
  esac
  case "$name" in
    topics | consumer-groups | configs | consumer-perf | get-offsets)
      if ! has_arg --bootstrap-server ${args[@]+"${args[@]}"} && ! has_arg --bootstrap-controller ${args[@]+"${args[@]}"}; then
        args=(--bootstrap-server "$BOOTSTRAP" ${args[@]+"${args[@]}"})
      fi
      ;;
    producer-perf)
      # ProducerPerformance (4.1) has no --bootstrap-server; pass it as a producer property.
      local a found=0 i
      for a in ${args[@]+"${args[@]}"}; do
        case "$a" in *bootstrap.servers=* | --producer.config | --producer.config=* | --bootstrap-server*) found=1 ;; esac
      done
      if [ "$found" = 0 ]; then
        found=-1
        for i in "${!args[@]}"; do
          if [ "${args[$i]}" = --producer-props ]; then
            args=("${args[@]:0:i+1}" "bootstrap.servers=$BOOTSTRAP" "${args[@]:i+1}")
            found=1
            break
          fi
        done
        [ "$found" = 1 ] || args+=(--producer-props "bootstrap.servers=$BOOTSTRAP")
      fi
      ;;
  esac
  init_tool_java
  exec "${TOOL_JAVA[@]}" "$cls" ${args[@]+"${args[@]}"}
}

# ---------------------------------------------------------------------------------------------
# Cluster mode: one KRaft controller process plus N broker processes (broker-only nodes), each
# with its own port, run dir and data dir, all from the same jars. See README "Cluster".

CL_BASE="" CL_N="" CL_STEP="" CL_CPORT="" CL_DIR="" CL_RF="" CL_MIN_ISR=""
NODE_ROLE="" NODE_ID=""

cluster_init() {
  CL_BASE=${KAFKA_CLUSTER_PORT:-14092}
  is_uint "$CL_BASE" || die "KAFKA_CLUSTER_PORT must be a port number, got '$CL_BASE'"
  CL_N=${KAFKA_CLUSTER_BROKERS:-3}
  [[ "$CL_N" =~ ^[1-9]$ ]] || die "KAFKA_CLUSTER_BROKERS must be 1..9, got '$CL_N'"
  CL_STEP=${KAFKA_CLUSTER_PORT_STEP:-1000}
  is_uint "$CL_STEP" && [ "$CL_STEP" -ge 2 ] || die "KAFKA_CLUSTER_PORT_STEP must be a number >= 2, got '$CL_STEP'"
  CL_CPORT=${KAFKA_CLUSTER_CONTROLLER_PORT:-$((CL_BASE + 1))}
  is_uint "$CL_CPORT" || die "KAFKA_CLUSTER_CONTROLLER_PORT must be a port number, got '$CL_CPORT'"
  local i port
  for i in $(seq 1 "$CL_N"); do
    port=$(broker_port "$i")
    [ "$port" -le 65535 ] || die "broker $i would listen on port $port (> 65535); lower KAFKA_CLUSTER_PORT or KAFKA_CLUSTER_PORT_STEP"
    [ "$port" != "$CL_CPORT" ] || die "broker $i and the controller would both use port $port"
  done
  CL_DIR=${KAFKA_CLUSTER_DIR:-$CACHE_DIR/cluster-$CL_BASE}
  case "$CL_DIR" in /*) ;; *) CL_DIR="$PWD/$CL_DIR" ;; esac
  CL_DIR=${CL_DIR%/}
  # Internal topics and the broker default: replication factor 3 (or N), min ISR 2 (or N-1).
  CL_RF=$((CL_N < 3 ? CL_N : 3))
  CL_MIN_ISR=$((CL_RF > 2 ? 2 : 1))
}

broker_port() { echo $((CL_BASE + ($1 - 1) * CL_STEP)); }

cluster_bootstrap() {
  local i out=""
  for i in $(seq 1 "$CL_N"); do out="${out:+$out,}$HOST:$(broker_port "$i")"; done
  echo "$out"
}

# Point the per-node globals (PORT, RUN_DIR, PID_FILE, ...) at "controller" or broker ID.
select_node() {
  local which=$1
  if [ "$which" = controller ]; then
    NODE_ROLE=controller NODE_ID=0 PORT=$CL_CPORT RUN_DIR="$CL_DIR/controller"
  else
    [[ "$which" =~ ^[1-9]$ ]] && [ "$which" -le "$CL_N" ] ||
      die "no broker '$which' (brokers are 1..$CL_N)"
    NODE_ROLE=broker NODE_ID=$which PORT=$(broker_port "$which") RUN_DIR="$CL_DIR/broker-$which"
  fi
  CPORT=$CL_CPORT
  DATA_DIR="$RUN_DIR/data"
  LOG_DIR="$RUN_DIR/logs"
  PID_FILE="$RUN_DIR/kafka.pid"
  SERVER_PROPS="$RUN_DIR/server.properties"
  BOOTSTRAP="$HOST:$PORT"
}

node_name() { if [ "$NODE_ROLE" = controller ]; then echo "controller"; else echo "broker $NODE_ID"; fi; }

write_node_properties() {
  {
    echo "# Generated by dev/kafka/kafka.sh (cluster mode) on each start; edits are overwritten."
    echo "process.roles=$NODE_ROLE"
    echo "node.id=$NODE_ID"
    echo "controller.quorum.voters=0@$HOST:$CL_CPORT"
    echo "controller.listener.names=CONTROLLER"
    echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    echo "log.dirs=$DATA_DIR"
    if [ "$NODE_ROLE" = controller ]; then
      echo "listeners=CONTROLLER://$HOST:$CL_CPORT"
    else
      cat <<EOP
listeners=PLAINTEXT://$HOST:$PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
inter.broker.listener.name=PLAINTEXT
EOP
    fi
    cat <<EOP

# Replicated like a production cluster: internal topics and the default use RF $CL_RF, min ISR $CL_MIN_ISR.
default.replication.factor=$CL_RF
min.insync.replicas=$CL_MIN_ISR
offsets.topic.replication.factor=$CL_RF
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$CL_RF
transaction.state.log.min.isr=$CL_MIN_ISR
share.coordinator.state.topic.replication.factor=$CL_RF
share.coordinator.state.topic.min.isr=$CL_MIN_ISR

# Small heaps: the compaction dedupe buffer (128 MiB by default) would take a third of one.
log.cleaner.dedupe.buffer.size=33554432

# Test friendliness.
group.initial.rebalance.delay.ms=$GROUP_INITIAL_DELAY
log.cleaner.backoff.ms=1000
auto.create.topics.enable=false
num.partitions=1
EOP
  } >"$SERVER_PROPS"
}

cluster_id() {
  local f="$CL_DIR/cluster.id" id
  if [ ! -s "$f" ]; then
    # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding; like Kafka's own
    # Uuid.randomUuid, never one starting with '-' (1 in 64), which the storage tool would
    # read as an option ("--cluster-id: expected one argument").
    id=-
    while [ "${id:0:1}" = - ]; do
      id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    done
    echo "$id" >"$f"
  fi
  tr -d '[:space:]' <"$f"
}

# Formats every selected node whose data dir is new (in parallel), with the shared cluster id.
format_nodes() {
  local id node pids=() names=() i failed=0
  id=$(cluster_id)
  for node in "$@"; do
    select_node "$node"
    [ -f "$DATA_DIR/meta.properties" ] && continue
    run_tool_class kafka.tools.StorageTool format -t "$id" -c "$SERVER_PROPS" \
      >"$LOG_DIR/format.log" 2>&1 &
    pids+=($!)
    names+=("$node")
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      select_node "${names[$i]}"
      cat "$LOG_DIR/format.log" >&2
      echo "kafka: error: formatting $DATA_DIR failed (see above)" >&2
      failed=1
    fi
  done
  [ "$failed" = 0 ] || exit 1
}

# Launches the selected nodes that are not running (controller first if among them).
launch_nodes() {
  local node pid fresh=()
  for node in "$@"; do
    select_node "$node"
    mkdir -p "$DATA_DIR" "$LOG_DIR"
    if pid=$(current_pid); then continue; fi
    rm -f "$PID_FILE"
    port_open "$PORT" && die "port $PORT on $HOST ($(node_name)) is already in use by another process"
    write_node_properties
    fresh+=("$node")
  done
  [ ${#fresh[@]} -gt 0 ] || return 0
  format_nodes "${fresh[@]}"
  for node in "${fresh[@]}"; do
    select_node "$node"
    if [ "$NODE_ROLE" = broker ]; then
      launch_jvm "${KAFKA_CLUSTER_HEAP_OPTS:--Xmx384m -Xms128m}"
    else
      launch_jvm "${KAFKA_CLUSTER_CONTROLLER_HEAP_OPTS:--Xmx192m -Xms64m}"
    fi
  done
}

# True when server.log $1 has "Kafka Server started" after its latest start header (the header
# launch_jvm writes). One awk over the file, no pipe: `tail | grep -q` under pipefail was false
# whenever grep quit at the match while tail still had lines to write (tail killed by SIGPIPE,
# status 141), i.e. for every node that had logged more than a pipe's worth (~64 KiB) since it
# started: `cluster start` waited out START_TIMEOUT and then stopped that healthy node.
started_since_launch() {
  awk '/^===== .* kafka\.sh start/ { started = 0 } /Kafka Server started/ { started = 1 }
    END { exit !started }' "$1" 2>/dev/null
}

# Waits until the selected node logs "Kafka Server started" after its latest start header
# (a broker logs it once the controller has unfenced it) and its port accepts connections.
wait_node_ready() {
  local pid deadline=$((SECONDS + START_TIMEOUT))
  pid=$(current_pid) || start_failed "$(node_name) is not running (run dir $RUN_DIR)"
  while :; do
    is_alive "$pid" || start_failed "$(node_name) (pid $pid) exited during startup"
    if port_open "$PORT" && started_since_launch "$LOG_DIR/server.log"; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill_broker "$pid" >/dev/null 2>&1 || true
      start_failed "$(node_name) on $BOOTSTRAP was not ready within ${START_TIMEOUT} s (process stopped)"
    fi
    sleep 0.2
  done
  echo "kafka: $(node_name) running on $BOOTSTRAP (pid $pid, logs $LOG_DIR/server.log)"
}

cluster_lock() {
  mkdir -p "$CL_DIR"
  # fd 8 is not passed on to the JVMs (see launch_jvm).
  exec 8>"$CL_DIR/.cluster.lock"
  if command -v flock >/dev/null 2>&1; then
    flock -w $((START_TIMEOUT + 120)) 8 || die "timed out waiting for another cluster command ($CL_DIR/.cluster.lock)"
  fi
}

require_controller() {
  select_node controller
  current_pid >/dev/null || die "the cluster's controller is not running (dev/kafka/kafka.sh cluster start)"
}

broker_ids() {
  [ $# -ge 1 ] || die "name at least one broker (1..$CL_N)"
  local id
  for id in "$@"; do select_node "$id"; done
}

cluster_start() {
  local t0=$SECONDS i ids=()
  init_tool_java
  cluster_lock
  for i in $(seq 1 "$CL_N"); do ids+=("$i"); done
  launch_nodes controller
  select_node controller
  wait_node_ready
  launch_nodes "${ids[@]}"
  for i in "${ids[@]}"; do select_node "$i"; wait_node_ready; done
  echo "kafka: cluster running; bootstrap servers $(cluster_bootstrap)"
  note "ready after $((SECONDS - t0)) s"
}

start_brokers() {
  broker_ids "$@"
  init_tool_java
  cluster_lock
  require_controller
  local id t0=$SECONDS
  launch_nodes "$@"
  for id in "$@"; do select_node "$id"; wait_node_ready; done
  note "ready after $((SECONDS - t0)) s"
}

# SIGTERM (a broker's controlled shutdown: it hands its leaderships over first), then wait.
stop_nodes() {
  local node pid t0=$SECONDS pids=() names=()
  for node in "$@"; do
    select_node "$node"
    if pid=$(current_pid); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$node")
    else
      rm -f "$PID_FILE"
      echo "kafka: $(node_name) not running"
    fi
  done
  local i
  for i in "${!pids[@]}"; do
    select_node "${names[$i]}"
    kill_broker "${pids[$i]}"
    echo "kafka: $(node_name) stopped (pid ${pids[$i]}) in $((SECONDS - t0)) s"
  done
}

kill_brokers() {
  broker_ids "$@"
  cluster_lock
  local id pid deadline
  for id in "$@"; do
    select_node "$id"
    if ! pid=$(current_pid); then
      rm -f "$PID_FILE"
      echo "kafka: broker $id not running"
      continue
    fi
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while is_alive "$pid"; do
      [ "$SECONDS" -lt "$deadline" ] || die "pid $pid survived SIGKILL"
      sleep 0.1
    done
    rm -f "$PID_FILE"
    echo "kafka: broker $id killed (SIGKILL, pid $pid)"
  done
}

cluster_status() {
  local node pid rc=0 nodes=(controller)
  local i
  for i in $(seq 1 "$CL_N"); do nodes+=("$i"); done
  for node in "${nodes[@]}"; do
    select_node "$node"
    if pid=$(current_pid) && port_open "$PORT"; then
      echo "kafka: $(node_name) running on $BOOTSTRAP (pid $pid)"
    else
      echo "kafka: $(node_name) not running (run dir $RUN_DIR)"
      rc=3
    fi
  done
  return "$rc"
}

cluster_stop() {
  cluster_lock
  local i ids=()
  for i in $(seq 1 "$CL_N"); do ids+=("$i"); done
  stop_nodes "${ids[@]}" # brokers first: their controlled shutdown needs the controller
  stop_nodes controller
}

cluster_clean() {
  cluster_stop
  [ -d "$CL_DIR" ] || { echo "kafka: nothing to clean ($CL_DIR does not exist)"; return 0; }
  case "$CL_DIR" in
    "" | / | "$HOME" | "$SCRIPT_DIR" | "$CACHE_DIR") die "refusing to delete $CL_DIR" ;;
  esac
  [ -f "$CL_DIR/.cluster.lock" ] || die "refusing to delete $CL_DIR: it does not look like a kafka.sh cluster dir"
  rm -rf "$CL_DIR"
  echo "kafka: removed $CL_DIR"
}

cmd_cluster() {
  [ $# -ge 1 ] || die "cluster: missing command (start, stop, status, bootstrap, start-broker, stop-broker, kill-broker, restart-broker, logs, clean, tool)"
  cluster_init
  local sub=$1; shift
  case "$sub" in
    start) cluster_start ;;
    stop) cluster_stop ;;
    status) cluster_status ;;
    bootstrap) cluster_bootstrap ;;
    start-broker) start_brokers "$@" ;;
    stop-broker) broker_ids "$@"; cluster_lock; stop_nodes "$@" ;;
    kill-broker) kill_brokers "$@" ;;
    restart-broker)
      broker_ids "$@"
      (cluster_lock; stop_nodes "$@")
      start_brokers "$@"
      ;;
    logs)
      [ $# -ge 1 ] || die "cluster logs: name a node (controller or 1..$CL_N)"
      select_node "$1"; shift
      cmd_logs "$@"
      ;;
    clean) cluster_clean ;;
    tool) BOOTSTRAP=$(cluster_bootstrap); cmd_tool "$@" ;;
    *) echo "kafka: error: unknown cluster command '$sub'" >&2; usage >&2; exit 2 ;;
  esac
}

main() {
  [ $# -ge 1 ] || { usage >&2; exit 2; }
  local cmd=$1; shift
  case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    clean) cmd_clean ;;
    classpath) resolve_classpath; echo "$CP" ;;
    tool) cmd_tool "$@" ;;
    cluster) cmd_cluster "$@" ;;
    -h | --help | help) usage ;;
    *) echo "kafka: error: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
  esac
}

main "$@"
