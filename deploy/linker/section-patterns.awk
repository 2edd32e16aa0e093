# Reads "cost symbol" lines in the order wanted and prints, once per function, the
# input-section patterns that place it (with -ffunction-sections each function has its own
# section, ".text.SYMBOL", or ".text.unlikely.SYMBOL" and the like where LLVM or GCC
# judged it cold or start-up only).
#
# What changes between builds becomes a wildcard: a legacy Rust symbol's hash ("17h" and
# 16 hex digits, which follow the compiler, the dependency versions and the features), a
# v0 symbol's crate disambiguators ("Cs...", as std's symbols are), and the suffixes
# of clones (".llvm.N", ".constprop.N"). Callgrind's "'2" marks a recursion level.
{
  name = $2
  sub(/'[0-9]+$/, "", name)
  if (name ~ /^_ZN.*17h[0-9a-f]+E/) {
    sub(/17h[0-9a-f]+E.*$/, "17h", name)
  } else if (name ~ /^_R/) {
    gsub(/Cs[0-9A-Za-z]+_/, "Cs*_", name)
    sub(/\.llvm\..*$/, "", name)
  } else {
    sub(/\.(llvm|constprop|isra|part|cold|lto_priv)\..*$/, "", name)
  }
  # Linker-script patterns are words; a name with other characters is not a symbol.
  if (name !~ /^[A-Za-z_$.0-9*]+$/) next
  if (name in seen) next
  seen[name] = 1
  printf "    *(.text.%s* .text.unlikely.%s* .text.hot.%s* .text.startup.%s*)\n", name, name, name, name
}
