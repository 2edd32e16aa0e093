#!/usr/bin/env bash
# Checks deploy/systemd/chattail.service with `systemd-analyze verify`, on a machine where
# chattail is not installed and the chattail user need not exist (a CI container or VM).
#
# Usage: deploy/systemd/verify.sh [CHATTAIL_BINARY]
#
# systemd-analyze refuses an ExecStart= whose program does not exist, so the unit is
# checked as a copy whose ExecStart= runs CHATTAIL_BINARY (default: target/release/chattail
# or target/debug/chattail if built, else /bin/true). Nothing else in the unit is changed,
# except that ExecReload='s /bin/kill is replaced the same way on a machine without it
# (procps is not in minimal Debian images).
#
# systemd-analyze verify sometimes exits 0 after printing a problem (an unknown key, a
# value it cannot parse: it ignores the line and goes on), so this script also fails when
# any line of its output is about the unit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
unit_name=chattail.service
unit="$here/$unit_name"
installed_binary=/usr/local/bin/chattail

die() {
  echo "verify.sh: error: $*" >&2
  exit 1
}

binary="${1:-}"
if [[ -z $binary ]]; then
  for candidate in "$repo/target/release/chattail" "$repo/target/debug/chattail" /bin/true; do
    if [[ -f $candidate && -x $candidate ]]; then
      binary=$candidate
      break
    fi
  done
fi
[[ -f $binary && -x $binary ]] || die "'$binary' is not an executable file"
# ExecStart= needs an absolute path.
binary="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")"
[[ $binary != *[[:space:]]* ]] || die "the binary's path must not contain white space: '$binary'"

if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "verify.sh: systemd-analyze not found; installing the systemd package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends systemd >&2
  fi
  command -v systemd-analyze >/dev/null 2>&1 ||
    die "systemd-analyze not found; install the 'systemd' package (as root: apt-get install --no-install-recommends systemd)"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Copy the unit line by line (no sed, so no path character needs escaping), swapping the
# programs that do not exist here.
rewrote_exec_start=0
while IFS= read -r line || [[ -n $line ]]; do
  case $line in
    "ExecStart=$installed_binary" | "ExecStart=$installed_binary "*)
      line="ExecStart=$binary${line#"ExecStart=$installed_binary"}"
      rewrote_exec_start=1
      ;;
    "ExecReload=/bin/kill "*)
      if [[ ! -x /bin/kill ]]; then
        echo "verify.sh: note: /bin/kill is missing here; checking ExecReload= with /bin/true in its place" >&2
        line="ExecReload=/bin/true ${line#"ExecReload=/bin/kill "}"
      fi
      ;;
  esac
  printf '%s\n' "$line"
done <"$unit" >"$tmp/$unit_name"
[[ $rewrote_exec_start -eq 1 ]] ||
  die "$unit has no 'ExecStart=$installed_binary ...' line; update this script along with the unit"

args=(verify)
# The man page named by Documentation= is not installed in CI; do not look for it.
args+=(--man=no)
# From systemd 250 on, errors in other units (multi-user.target, ...) would also fail the
# run; only this unit is under test.
version="$(systemd-analyze --version | awk 'NR == 1 { print $2; exit }')"
if [[ $version =~ ^[0-9]+$ ]] && ((version >= 250)); then
  args+=(--recursive-errors=no)
fi
args+=("$tmp/$unit_name")

echo "verify.sh: systemd-analyze ${args[*]}  (systemd $version, ExecStart=$binary)"
status=0
output="$(systemd-analyze "${args[@]}" 2>&1)" || status=$?
if [[ -n $output ]]; then
  printf '%s\n' "$output"
fi

problems="$(grep -F -e "$unit_name" -e "$tmp" <<<"$output" || true)"
if [[ $status -ne 0 || -n $problems ]]; then
  echo "verify.sh: FAILED: systemd-analyze exited with $status and reported on $unit_name:" >&2
  printf '%s\n' "${problems:-(no line names the unit; see the output above)}" >&2
  exit 1
fi
echo "verify.sh: OK: $unit passes systemd-analyze verify"
