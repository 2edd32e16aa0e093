# Prints "cost symbol" for each function of the chattail binary in callgrind output files
# (written with --demangle=no --dump-instr=no).
#
# Callgrind compresses names: "fn=(12) name" defines id 12 and a later "fn=(12)" reuses
# it, for objects ("ob=", "cob=") and functions ("fn=", "cfn=") alike. A cost line after
# "calls=" is the callee's inclusive cost, which is not the caller's own.
function define(kind, rest,    id, name) {
  if (match(rest, /^\([0-9]+\)/)) {
    id = substr(rest, 2, RLENGTH - 2)
    name = substr(rest, RLENGTH + 2)
    if (name != "") names[kind, id] = name
    return names[kind, id]
  }
  return rest
}
FNR == 1 { delete names }
/^ob=/ { object = define("ob", substr($0, 4)); next }
/^cob=/ { define("ob", substr($0, 5)); next }
/^cfn=/ { define("fn", substr($0, 5)); next }
/^calls=/ { inclusive = 1; next }
/^fn=/ { function_name = define("fn", substr($0, 4)); next }
/^[0-9+*-]/ {
  if (inclusive) { inclusive = 0; next }
  if (object ~ /\/chattail$/ && function_name != "") {
    split($0, fields, " ")
    cost[function_name] += fields[2]
  }
}
END { for (name in cost) print cost[name], name }
