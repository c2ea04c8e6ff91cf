#!/usr/bin/env bash
# The worked example of docs/http-api.md#worked-example, steps 1-21, walked with curl
# against a running server, every reply compared with what the protocol promises.
#
#   examples/test_rest.sh                      # against http://127.0.0.1:8888
#   RESTMQ_URL=http://host:8890 examples/test_rest.sh
#
# It works on a fresh queue (tour-<pid>-<random>), so the Redis behind the server need not be
# empty: expected keys are that queue's, and /stats/ is checked for that queue's entry only.
# JSON is compared after parsing (key order and spacing are free), everything else byte for
# byte. The first mismatch stops the walk: it prints the step, what was expected and what came,
# and exits 1. The queue is purged at the end (its name stays listed in /q/ and /stats/).
set -u

H=${RESTMQ_URL:-http://127.0.0.1:8888}
H=${H%/}
Q="tour-$$-$RANDOM$RANDOM"
CRLF=$'\r\n'
TMP=$(mktemp -d)
STREAM_PID=
cleanup() {
    if [ -n "$STREAM_PID" ]; then kill "$STREAM_PID" 2>/dev/null; wait "$STREAM_PID" 2>/dev/null; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed (to compare JSON)" >&2; exit 2; }

# Compares a JSON reply (in a file) with the expected JSON after parsing both.
#   json FILE EXPECTED           the whole reply
#   jsonp FILE EXPECTED          the reply is cb(<JSON>);CRLF
#   stats FILE EXPECTED QUEUE    /stats/: the entry of QUEUE, a count matching the queues
# In EXPECTED the string "<Redis Connection: *>" stands for any Redis description.
cat >"$TMP/compare.py" <<'EOF'
import json, re, sys

def same(expected, got):
    if expected == "<Redis Connection: *>":
        return isinstance(got, str) and re.fullmatch(
            r"<Redis Connection: .+ - \d+ connection\(s\)>", got) is not None
    if isinstance(expected, dict):
        return (isinstance(got, dict) and expected.keys() == got.keys()
                and all(same(expected[k], got[k]) for k in expected))
    return type(expected) is type(got) and expected == got

mode, path, expected = sys.argv[1:4]
text = open(path, encoding="utf-8", newline="").read()
if mode == "jsonp":
    if not (text.startswith("cb(") and text.endswith(");\r\n")):
        sys.exit(1)
    text = text[3:-4]
try:
    got = json.loads(text)
except ValueError:
    sys.exit(1)
expected = json.loads(expected)
if mode == "stats":
    queues = got.get("queues") if isinstance(got, dict) else None
    ok = (isinstance(queues, dict) and same(expected, queues.get(sys.argv[4]))
          and got.get("count") == len(queues) and same("<Redis Connection: *>", got.get("redis")))
    sys.exit(0 if ok else 1)
sys.exit(0 if same(expected, got) else 1)
EOF

visible() { # CR and LF made visible
    local text=${1//$'\r'/\\r}
    printf '%s' "${text//$'\n'/\\n}"
}

fail() { # step expected got
    printf 'FAIL step %s\n  expected: %s\n  got:      %s\n' "$1" "$(visible "$2")" \
        "$(visible "$3")" >&2
    exit 1
}

ok() { printf 'ok %-4s %s\n' "$1" "$2"; }

# request CURL-ARGS...: sets STATUS and BODY (every byte, trailing CRLF kept); headers in
# $TMP/head, body in $TMP/body.
request() {
    STATUS=$(curl -s --max-time 10 -o "$TMP/body" -D "$TMP/head" -w '%{http_code}' "$@") ||
        STATUS="no reply (curl exit $?)"
    BODY=$(cat "$TMP/body" 2>/dev/null; printf x)
    BODY=${BODY%x}
}

header() { # NAME: the value of that reply header, without CR
    sed -n "s/^$1: *//Ip" "$TMP/head" | tr -d '\r' | head -n 1
}

check_status() { # step status
    [ "$STATUS" = "$2" ] || fail "$1" "status $2" "status $STATUS, body $BODY"
}

check_header() { # step name value
    local got
    got=$(header "$2")
    [ "$got" = "$3" ] || fail "$1" "$2: $3" "$2: $got"
}

check_ending() { # step crlf|none
    case $BODY in
        *"$CRLF") [ "$2" = crlf ] || fail "$1" "a body without a final CRLF" "$BODY" ;;
        *) [ "$2" = none ] || fail "$1" "a body ending with CRLF" "$BODY" ;;
    esac
}

expect_text() { # step what status body
    check_status "$1" "$3"
    [ "$BODY" = "$4" ] || fail "$1" "$4" "$BODY"
    ok "$1" "$2"
}

expect_json() { # step what status ending expected-json [mode [queue]]
    check_status "$1" "$3"
    check_ending "$1" "$4"
    python3 "$TMP/compare.py" "${6:-json}" "$TMP/body" "$5" ${7:+"$7"} ||
        fail "$1" "$5" "$BODY"
    ok "$1" "$2"
}

echo "RestMQ at $H, queue $Q"

request -d "queue=$Q&value=foobar" "$H/"
expect_text 1 "POST / adds $Q:1" 200 "$Q:1$CRLF"

request -d "body={\"cmd\":\"get\",\"queue\":\"$Q\"}" "$H/queue"
check_header 2 Content-Type application/json
expect_json 2 "JSON get peeks, counting the read" 200 none \
    "{\"queue\": \"$Q\", \"value\": \"foobar\", \"key\": \"$Q:1\", \"count\": 1}"

request -d "value=foobar" "$H/q/$Q"
expect_text 3 "POST /q/ adds $Q:2" 200 "$Q:2$CRLF"

request "$H/q/$Q"
expect_json 4 "GET /q/ takes the oldest" 200 crlf \
    "{\"key\": \"$Q:1\", \"value\": \"foobar\", \"count\": 0}"

request "$H/control/$Q"
expect_json 5 "GET /control/: started" 200 crlf \
    "{\"redis\": \"<Redis Connection: *>\", \"queue\": \"$Q\", \"status\": {\"queue\": \"$Q\", \"status\": 1}}"

for status in stop start; do
    step=$([ $status = stop ] && echo 6 || echo 7)
    n=$([ $status = stop ] && echo 0 || echo 1)
    request -d "status=$status" "$H/control/$Q"
    expect_json $step "status=$status" 200 crlf "{\"stat\": {\"queue\": \"$Q\", \"status\": $n}}"
    request "$H/control/$Q"
    expect_json ${step}b "GET /control/ shows status $n" 200 crlf \
        "{\"redis\": \"<Redis Connection: *>\", \"queue\": \"$Q\", \"status\": {\"queue\": \"$Q\", \"status\": $n}}"
done

request -X DELETE "$H/q/$Q"
expect_json 8 "DELETE purges the pending $Q:2" 200 crlf "{\"queue\": \"$Q\", \"status\": 1}"

request "$H/p/$Q"
expect_json 9 "policy never set: broadcast" 200 crlf "{\"queue\": \"$Q\", \"value\": \"broadcast\"}"

for policy in roundrobin broadcast; do
    step=$([ $policy = roundrobin ] && echo 10 || echo 11)
    request -d "policy=$policy" "$H/p/$Q"
    expect_text $step "policy=$policy" 200 "OK$CRLF"
    request "$H/p/$Q"
    expect_json ${step}b "GET /p/ shows $policy" 200 crlf "{\"queue\": \"$Q\", \"value\": \"$policy\"}"
done

# Step 12: a comet consumer in the background; its headers arrive at once.
curl -sN --max-time 15 -D "$TMP/stream-head" -o "$TMP/stream" "$H/c/$Q" &
STREAM_PID=$!
for _ in $(seq 200); do
    grep -q '^HTTP/1.1 200' "$TMP/stream-head" 2>/dev/null && break
    sleep 0.05
done
grep -q '^HTTP/1.1 200' "$TMP/stream-head" 2>/dev/null ||
    fail 12 "the comet stream's headers at once" "$(cat "$TMP/stream-head" 2>/dev/null)"
start=$(date +%s%N)
request -d "value=foobar" "$H/q/$Q"
expect_text 12 "POST /q/ adds $Q:3 while the comet stream is open" 200 "$Q:3$CRLF"
for _ in $(seq 200); do
    grep -q $'\r$' "$TMP/stream" 2>/dev/null && break
    sleep 0.025
done
elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
kill "$STREAM_PID" 2>/dev/null
wait "$STREAM_PID" 2>/dev/null
STREAM_PID=
line=$(head -n 1 "$TMP/stream"; printf x)
line=${line%x}
printf '%s' "$line" >"$TMP/body"
STATUS=200 BODY=$line
expect_json 12b "the comet stream delivers $Q:3 (${elapsed} ms)" 200 crlf \
    "{\"key\": \"$Q:3\", \"value\": \"foobar\"}"

request -d 'value=x&ttl=abc' "$H/q/$Q"
check_header 13 Content-Type application/json
expect_json 13 "a bad ttl is refused" 400 none '{"error": "invalid argument: ttl"}'

request "$H/q/$Q"
expect_text 14 "an empty queue answers 204" 204 ""

request -d "body={\"cmd\":\"take\",\"queue\":\"$Q\"}" "$H/queue"
expect_json 15 "JSON take on an empty queue" 200 none '{"error": "empty queue"}'

request -d 'body={"cmd":"foo"}' "$H/queue"
expect_json 16 "an unknown JSON command" 200 none '{"error": "null resultset"}'

request -d "value=123" "$H/q/$Q"
expect_text 17 "POST /q/ adds $Q:4" 200 "$Q:4$CRLF"
request "$H/q/$Q?callback=cb"
expect_json 17b "JSONP hard get" 200 crlf "{\"key\": \"$Q:4\", \"value\": \"123\", \"count\": 0}" jsonp

request -d "value=v" "$H/q/$Q?callback=cb"
expect_text 18 "JSONP add" 200 "cb(\"$Q:5\");$CRLF"

request "$H/stats/"
check_header 19 Content-Type application/json
expect_json 19 "/stats/ lists $Q with one pending message" 200 none \
    "{\"name\": \"$Q\", \"len\": 1, \"status\": 1, \"policy\": 1, \"policy_name\": \"broadcast\"}" \
    stats "$Q"

request "$H/stats"
expect_json 20 "/stats without a slash is not found" 404 none '{"error": "not found"}'

request "$H/"
check_status 21 302
check_header 21 Location /static/index.html
ok 21 "GET / redirects to the dashboard"

curl -s --max-time 10 -o /dev/null -X DELETE "$H/q/$Q"
echo "all steps passed"
