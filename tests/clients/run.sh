#!/usr/bin/env bash
# Client-compatibility smoke test: the official `anthropic` Python SDK and Claude Code
# (`claude -p`) talk to cc-forwarder, which relays to ccf-mock-upstream.
#
#   bash tests/clients/run.sh        (or: cargo xtask clients)
#
# Needs cargo, python3 (with venv) and node/npm; installs the pinned clients into
# tests/clients/.venv and tests/clients/node_modules (both reused on the next run).
# Environment knobs:
#   SMOKE_BUILD_WAIT=1200   seconds to keep retrying a failing `cargo build` (0: fail at once)
#   SMOKE_KEEP_TMP=1        keep the temp folder (config, logs, Claude Code's HOME)
#   SMOKE_SKIP_SDK=1 / SMOKE_SKIP_CLAUDE=1   skip one client
# Prints `PASS ...` / `FAIL ...` per check and `N passed, N failed` last; exits 1 on any failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BUILD_WAIT="${SMOKE_BUILD_WAIT:-1200}"
INBOUND_TOKEN="smoke-inbound-token"
# What the mock's first three text deltas spell (crates/ccf-testkit/src/render.rs, WORDS).
EXPECTED_TEXT="Hello from the"

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }
log() { echo "==> $*"; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/ccf-clients.XXXXXX")"
MOCK_PID=""
FWD_PID=""

stop() {
    local pid="$1"
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    stop "$FWD_PID"
    stop "$MOCK_PID"
    if [[ -n "${SMOKE_KEEP_TMP:-}" ]]; then
        echo "temp folder kept: $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

summary_and_exit() {
    echo
    echo "$PASSED passed, $FAILED failed"
    if ((FAILED > 0 || PASSED == 0)); then exit 1; fi
    exit 0
}

show_logs() {
    echo "--- forwarder log (last 40 lines) ---"
    tail -n 40 "$TMP/forwarder.log" 2>/dev/null || true
    echo "--- mock log (last 10 lines) ---"
    tail -n 10 "$TMP/mock.log" 2>/dev/null || true
}

# Waits until `file` has a line starting with `prefix` and prints the rest of that line.
wait_for_line() {
    local file="$1" prefix="$2" pid="$3" deadline=$((SECONDS + 30)) line
    while ((SECONDS < deadline)); do
        line="$(grep -m1 -- "^$prefix" "$file" 2>/dev/null || true)"
        if [[ -n "$line" ]]; then
            echo "${line#"$prefix"}"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Waits until 127.0.0.1:port accepts TCP connections.
wait_for_port() {
    local port="$1" deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# --- 1. build -------------------------------------------------------------------------------
cd "$ROOT"
log "building cc-forwarder and ccf-mock-upstream (debug)"
build_deadline=$((SECONDS + BUILD_WAIT))
until cargo build -q -p cc-forwarder -p ccf-testkit --bins >"$TMP/build.log" 2>&1; do
    if ((SECONDS >= build_deadline)); then
        tail -n 40 "$TMP/build.log"
        fail "build: cargo build -p cc-forwarder -p ccf-testkit --bins"
        summary_and_exit
    fi
    echo "    build failed; retrying in 30s (until ${BUILD_WAIT}s have passed; SMOKE_BUILD_WAIT)"
    tail -n 3 "$TMP/build.log" | sed 's/^/    /'
    sleep 30
done
FORWARDER="$ROOT/target/debug/cc-forwarder"
MOCK="$ROOT/target/debug/ccf-mock-upstream"

# --- 2. mock upstream + forwarder -----------------------------------------------------------
# Port 0 everywhere: each binary picks a free port and prints it, so there is no race between
# choosing a port and binding it.
log "starting ccf-mock-upstream"
"$MOCK" --host 127.0.0.1 --port 0 >"$TMP/mock.log" 2>&1 &
MOCK_PID=$!
if ! MOCK_URL="$(wait_for_line "$TMP/mock.log" "ccf-mock-upstream listening on " "$MOCK_PID")"; then
    show_logs
    fail "start: ccf-mock-upstream did not print its address"
    summary_and_exit
fi

cat >"$TMP/config.yaml" <<EOF
server: {host: 127.0.0.1, port: 0}
usage_tracking: {enabled: false}
auth: {enabled: true, token: $INBOUND_TOKEN}
token_counting: {enabled: true}
logging: {level: debug}
endpoints:
  - name: mock
    url: "$MOCK_URL"
    token: upstream-token
    supports_count_tokens: true
EOF

log "starting cc-forwarder in front of $MOCK_URL"
"$FORWARDER" --config "$TMP/config.yaml" --no-tui >"$TMP/forwarder.log" 2>&1 &
FWD_PID=$!
if ! BASE_URL="$(wait_for_line "$TMP/forwarder.log" "export ANTHROPIC_BASE_URL=" "$FWD_PID")"; then
    show_logs
    fail "start: cc-forwarder did not print export ANTHROPIC_BASE_URL=..."
    summary_and_exit
fi
for url in "$MOCK_URL" "$BASE_URL"; do
    port="${url##*:}"
    port="${port%%/*}"
    if ! wait_for_port "$port"; then
        show_logs
        fail "start: nothing accepts connections at $url"
        summary_and_exit
    fi
done
log "forwarder at $BASE_URL -> mock at $MOCK_URL"

# --- 3. anthropic Python SDK ----------------------------------------------------------------
run_sdk() {
    local venv="$HERE/.venv"
    log "python SDK: $(grep -v '^#' "$HERE/requirements.txt" | tr '\n' ' ')"
    if [[ ! -x "$venv/bin/python" ]] && ! python3 -m venv "$venv" >"$TMP/venv.log" 2>&1; then
        cat "$TMP/venv.log"
        fail "sdk: python3 -m venv $venv"
        return
    fi
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -r "$HERE/requirements.txt" >"$TMP/pip.log" 2>&1; then
        tail -n 20 "$TMP/pip.log"
        fail "sdk: pip install -r tests/clients/requirements.txt"
        return
    fi
    local status=0
    env -u ANTHROPIC_AUTH_TOKEN ANTHROPIC_BASE_URL="$BASE_URL" ANTHROPIC_API_KEY="$INBOUND_TOKEN" \
        "$venv/bin/python" "$HERE/sdk_smoke.py" >"$TMP/sdk.out" 2>&1 || status=$?
    sed 's/^/    /' "$TMP/sdk.out"
    local passed failed
    passed="$(grep -c '^PASS ' "$TMP/sdk.out" || true)"
    failed="$(grep -c '^FAIL ' "$TMP/sdk.out" || true)"
    PASSED=$((PASSED + passed))
    FAILED=$((FAILED + failed))
    if ((status != 0 && failed == 0)); then
        fail "sdk: sdk_smoke.py exited with status $status"
    fi
}

# --- 4. Claude Code -------------------------------------------------------------------------
CLAUDE=""
install_claude() {
    local pinned installed=""
    pinned="$(node -p "require('$HERE/package.json').dependencies['@anthropic-ai/claude-code']")"
    log "Claude Code: @anthropic-ai/claude-code@$pinned"
    if [[ -f "$HERE/node_modules/@anthropic-ai/claude-code/package.json" ]]; then
        installed="$(node -p "require('$HERE/node_modules/@anthropic-ai/claude-code/package.json').version")"
    fi
    if [[ "$installed" != "$pinned" ]]; then
        local npm_command=(npm ci)
        [[ -f "$HERE/package-lock.json" ]] || npm_command=(npm install)
        if ! (cd "$HERE" && "${npm_command[@]}" --no-audit --no-fund) >"$TMP/npm.log" 2>&1; then
            tail -n 30 "$TMP/npm.log"
            fail "claude: ${npm_command[*]} in tests/clients"
            return 1
        fi
    fi
    # The package's postinstall puts the native binary in place of bin/claude.exe; if install
    # scripts did not run, the wrapper script finds the platform package's binary itself.
    if "$HERE/node_modules/.bin/claude" --version >/dev/null 2>&1; then
        CLAUDE="$HERE/node_modules/.bin/claude"
    else
        printf '#!/bin/sh\nexec node "%s" "$@"\n' \
            "$HERE/node_modules/@anthropic-ai/claude-code/cli-wrapper.cjs" >"$TMP/claude"
        chmod +x "$TMP/claude"
        CLAUDE="$TMP/claude"
        if ! "$CLAUDE" --version >/dev/null 2>&1; then
            fail "claude: neither node_modules/.bin/claude nor cli-wrapper.cjs runs"
            return 1
        fi
    fi
    echo "    $("$CLAUDE" --version)"
}

# Runs `claude -p "say hello" [extra args]` with a clean environment; `credential` is
# ANTHROPIC_API_KEY (x-api-key) or ANTHROPIC_AUTH_TOKEN (Authorization: Bearer).
run_claude() {
    local name="$1" credential="$2"
    shift 2
    local home="$TMP/home-$name"
    mkdir -p "$home"
    local status=0
    (cd "$TMP" && env -i PATH="$PATH" HOME="$home" TERM=dumb \
        ANTHROPIC_BASE_URL="$BASE_URL" "$credential=$INBOUND_TOKEN" \
        DISABLE_TELEMETRY=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 \
        timeout 120 "$CLAUDE" -p "say hello" "$@" </dev/null \
        >"$TMP/claude-$name.out" 2>"$TMP/claude-$name.err") || status=$?
    echo "$status"
}

check_claude() {
    local status
    # x-api-key, plain text output.
    status="$(run_claude apikey ANTHROPIC_API_KEY)"
    if [[ "$status" == 0 ]] && grep -qF "$EXPECTED_TEXT" "$TMP/claude-apikey.out"; then
        pass "claude -p (ANTHROPIC_API_KEY, x-api-key): printed \"$(head -c 80 "$TMP/claude-apikey.out")\""
    else
        fail "claude -p (ANTHROPIC_API_KEY, x-api-key): exit $status, stdout: $(head -c 300 "$TMP/claude-apikey.out"), stderr: $(head -c 500 "$TMP/claude-apikey.err")"
    fi
    # Bearer, JSON output: the result text plus the usage Claude Code accounted.
    status="$(run_claude bearer ANTHROPIC_AUTH_TOKEN --output-format json)"
    local verdict
    verdict="$(python3 - "$TMP/claude-bearer.out" "$EXPECTED_TEXT" <<'PY' 2>&1 || true
import json, sys
try:
    result = json.load(open(sys.argv[1]))
except Exception as problem:
    print(f"bad JSON output: {problem}")
    sys.exit()
usage = result.get("usage") or {}
problems = []
if result.get("is_error"):
    problems.append(f"is_error=true subtype={result.get('subtype')!r}")
if sys.argv[2] not in str(result.get("result")):
    problems.append(f"result={result.get('result')!r}")
if not usage.get("input_tokens") or not usage.get("output_tokens"):
    problems.append(f"usage={usage!r}")
if problems:
    print("; ".join(problems))
else:
    print(f"ok result={result['result']!r} usage in/out={usage['input_tokens']}/{usage['output_tokens']}")
PY
)"
    if [[ "$status" == 0 && "$verdict" == ok* ]]; then
        pass "claude -p --output-format json (ANTHROPIC_AUTH_TOKEN, Bearer): ${verdict#ok }"
    else
        fail "claude -p --output-format json (ANTHROPIC_AUTH_TOKEN, Bearer): exit $status, $verdict, stderr: $(head -c 500 "$TMP/claude-bearer.err")"
    fi
}

if [[ -z "${SMOKE_SKIP_SDK:-}" ]]; then run_sdk; fi
if [[ -z "${SMOKE_SKIP_CLAUDE:-}" ]]; then
    if install_claude; then
        check_claude
    fi
fi

if ((FAILED > 0)); then show_logs; fi
summary_and_exit
