#!/usr/bin/env bash
# Regenerates deploy/linker/hot-code.ld: the functions the release agent executes, found
# with callgrind over three workloads, written as linker input-section patterns.
#
#   bash deploy/linker/order-hot-code.sh
#
# Needs valgrind, rg (the catch-up bench), openssl and python3 (a local HTTPS Chat
# stand-in). The workloads:
#   - the steady-state bench (100 files, 50 rules, posts to the mock Chat), with a dump
#     every 2 s, since the bench ends the agent with SIGKILL;
#   - `run --once --dry-run` over the catch-up bench's three rule sets (literal-led, no
#     literal prefix, 100 rules), which take different prefilters and search paths;
#   - posts over TLS to a local HTTPS server, trusted through SSL_CERT_FILE, since the
#     benches' mock Chat speaks plain HTTP and Chat itself does not.
# Functions executed after the first dump of the steady state come first (hottest first),
# then those of start-up and the other workloads.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=deploy/linker
work=$(mktemp -d)
trap 'pkill -f "$work/https.py" 2>/dev/null || true; rm -rf "$work"' EXIT
binary=target/release/chattail

# The bench profile builds target/release/chattail with symbols; the default order keeps
# the profile independent of the script being replaced.
export CHATTAIL_DEFAULT_CODE_ORDER=1
cargo bench --bench steady_state --no-run
cargo bench --bench catch_up --no-run

echo "== steady state under callgrind"
mkdir -p "$work/cg"
cat > "$work/callgrind.sh" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --dump-instr=no --callgrind-out-file=$work/cg/steady.%p "\$@"
EOF
chmod +x "$work/callgrind.sh"
(while sleep 2; do callgrind_control -d >/dev/null 2>&1 || true; done) &
dumper=$!
CHATTAIL_BENCH_WRAPPER="$work/callgrind.sh" CHATTAIL_BENCH_FILES=100 CHATTAIL_BENCH_RATE=1000 \
  CHATTAIL_BENCH_IDLE_SECS=3 CHATTAIL_BENCH_SECS=8 cargo bench --bench steady_state >/dev/null
kill "$dumper"

echo "== catch-up rule sets under callgrind"
for set in literal none 100; do
  mkdir -p "$work/$set"
  CHATTAIL_BENCH_DIR="$work/$set" CHATTAIL_BENCH_ONLY=$set CHATTAIL_BENCH_HITS=10 \
    CHATTAIL_BENCH_MB=2 CHATTAIL_BENCH_RUNS=1 cargo bench --bench catch_up >/dev/null
  rm -rf "$work/$set/state"
  valgrind --tool=callgrind --demangle=no --dump-instr=no \
    --callgrind-out-file="$work/cg/other.$set" \
    "$binary" run --once --dry-run --config "$work/$set/chattail.yaml" >/dev/null 2>&1
done

echo "== posts over TLS under callgrind"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=ca -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
  > "$work/ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 1 -extfile "$work/ext" -out "$work/server.pem" 2>/dev/null
cat > "$work/https.py" <<'EOF'
import http.server, ssl, sys
class Chat(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(sys.argv[3], "a") as posts:
            posts.write("post\n")
        body = b'{"name":"spaces/S/messages/M","thread":{"name":"spaces/S/threads/T"}}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Chat)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
EOF
touch "$work/posts"
python3 "$work/https.py" "$work/server.pem" "$work/server.key" "$work/posts" > "$work/port" &
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")
touch "$work/app.log"
admin=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/tls.yaml" <<EOF
state_dir: $work/tls-state
admin:
  listen: 127.0.0.1:$admin
webhooks:
  oncall:
    url: https://127.0.0.1:$port/v1/spaces/S/messages?key=k&token=t
files:
  - path: $work/app.log
rules:
  - name: failed
    match: 'ERROR (?P<what>\w+) failed'
    webhook: oncall
    thread_key: 'failed-{what}'
EOF
SSL_CERT_FILE="$work/ca.pem" CHATTAIL_LOG=info valgrind --tool=callgrind --demangle=no \
  --dump-instr=no --callgrind-out-file="$work/cg/other.tls" \
  "$binary" run --config "$work/tls.yaml" > "$work/tls.log" 2>&1 &
agent=$!
for _ in $(seq 600); do grep -q "Following a file" "$work/tls.log" && break; sleep 0.1; done
for i in 1 2 3; do
  echo "ERROR job$i failed" >> "$work/app.log"
  for _ in $(seq 600); do
    [ "$(wc -l < "$work/posts")" -ge "$i" ] && break
    sleep 0.1
  done
  # What a Prometheus scrape and a health check run.
  python3 -c "import urllib.request as u; [u.urlopen('http://127.0.0.1:$admin' + p).read() for p in ('/metrics', '/healthz')]"
done
kill -TERM "$agent"
wait "$agent" || true

echo "== writing $here/hot-code.ld"
# Dumps are named steady.PID.N; the first (N = 1) holds start-up. The work directory's own
# name has a dot, so the dump number is picked by its suffix, not by a field count.
first=$(ls "$work"/cg/steady.*.1)
steady_dumps=$(ls "$work"/cg/steady.*.* | grep -v '\.1$')
{
  awk -f "$here/callgrind-functions.awk" $steady_dumps | sort -rn
  awk -f "$here/callgrind-functions.awk" "$first" | sort -rn
  awk -f "$here/callgrind-functions.awk" "$work"/cg/other.* | sort -rn
} | awk -f "$here/section-patterns.awk" > "$work/patterns"
{
  sed -n '1,/^  {$/p' "$here/hot-code.ld"
  cat "$work/patterns"
  sed -n '/^  }$/,$p' "$here/hot-code.ld"
} > "$work/hot-code.ld"
mv "$work/hot-code.ld" "$here/hot-code.ld"
echo "$(wc -l < "$work/patterns") functions"
