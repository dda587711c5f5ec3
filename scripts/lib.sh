# shellcheck shell=bash
# Shared by scripts/services and scripts/test. Source it; it sets no shell options.

# The project root, from this file's own location, so any working directory will do.
# shellcheck disable=SC2034  # used by the scripts that source this file
VANILLA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)

# Where the services listen, always on 127.0.0.1. Override from the environment.
: "${VANILLA_REDIS_PORT:=6390}"
: "${VANILLA_KAFKA_PORT:=19092}"
: "${VANILLA_KAFKA_CONTROLLER_PORT:=19093}"

say() { printf '%s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Microseconds since the epoch, and seconds elapsed since such a stamp ("4.25").
now_us() {
  local t=$EPOCHREALTIME
  printf '%s' "${t/[.,]/}"
}
elapsed_s() {
  local us=$(($(now_us) - $1))
  printf '%d.%02d' $((us / 1000000)) $((us / 10000 % 100))
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
