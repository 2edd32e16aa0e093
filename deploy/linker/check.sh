#!/usr/bin/env bash
# Checks the release binary's link options (build.rs) with both linkers a release build
# may use (rustc's bundled lld, the default, and GNU ld through cc): that
# deploy/linker/hot-code.ld links and puts a function it lists in .text.hot, ahead of one
# it does not list, and that packed relative relocations (where glibc is 2.36 or later)
# give a program that runs.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/probe.c" <<'C'
int unlisted(int x) { return x * 3; }
int sqlite3VdbeExec(int x) { return x + 1; }
int main(int argc, char **argv) { (void)argv; return unlisted(argc) + sqlite3VdbeExec(argc) == 0; }
C
lld_dir="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld"
for linker in lld bfd; do
  if [ "$linker" = lld ]; then flags=(-B "$lld_dir" -fuse-ld=lld); else flags=(-fuse-ld=bfd); fi
  if [ "$(getconf GNU_LIBC_VERSION | awk '{ split($2, v, "."); print (v[1] > 2 || v[2] >= 36) }')" = 1 ]; then
    flags+=(-Wl,-z,pack-relative-relocs)
  fi
  cc -O1 -fPIE -pie -ffunction-sections "${flags[@]}" -Wl,-T,hot-code.ld "$work/probe.c" -o "$work/probe"
  "$work/probe"
  hot=$(nm "$work/probe" | awk '$3 == "sqlite3VdbeExec" { print $1 }')
  cold=$(nm "$work/probe" | awk '$3 == "unlisted" { print $1 }')
  start=$(readelf -SW "$work/probe" | awk '$2 == ".text.hot" { print $4 }')
  if [ -z "$start" ] || [ "$((16#$hot))" -ge "$((16#$cold))" ] || [ "$((16#$hot))" -lt "$((16#$start))" ]; then
    echo "hot-code.ld with $linker: sqlite3VdbeExec at $hot, not in .text.hot ($start) before $cold" >&2
    exit 1
  fi
  echo "hot-code.ld links with $linker: .text.hot at $start, a listed function at $hot, an unlisted one at $cold"
done
