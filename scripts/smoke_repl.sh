#!/usr/bin/env bash
# Smoke test of llm-repl in a real terminal: start it in tmux, type a question, capture the
# pane, and check that an answer and the stats line appear.
#   make smoke-repl                                   # the default model (SmolLM2-135M-Instruct)
#   REPL_ARGS="--server http://127.0.0.1:8000" make smoke-repl
set -euo pipefail
command -v tmux >/dev/null || { echo "smoke-repl: needs tmux (apt-get install tmux)" >&2; exit 1; }
question=${QUESTION:-"What does the json module do?"}
session="llm-repl-smoke-$$"
pane_file=$(mktemp)
trap 'tmux kill-session -t "$session" 2>/dev/null || true; rm -f "$pane_file"' EXIT

wait_for() {  # wait_for PATTERN SECONDS: poll the pane until PATTERN shows
  for _ in $(seq "$2"); do
    tmux capture-pane -p -t "$session" >"$pane_file" 2>/dev/null || true
    grep -q -- "$1" "$pane_file" && return 0
    sleep 1
  done
  echo "smoke-repl: '$1' did not appear within $2 s; the pane:" >&2
  cat "$pane_file" >&2
  return 1
}

tmux new-session -d -s "$session" -x 120 -y 40 \
  "uv run --frozen llm-repl --history $(mktemp -u) ${REPL_ARGS:-}; sleep 30"
wait_for "chatting with" 120
tmux send-keys -t "$session" "$question" Enter
wait_for "tokens/s, first token" 180
answer=$(sed -n "/$question/,/tokens\/s, first token/p" "$pane_file" | sed '1d;$d' | tr -d '[:space:]')
cat "$pane_file"
if [ -z "$answer" ]; then
  echo "smoke-repl: FAIL: no answer between the question and the stats line" >&2
  exit 1
fi
tmux send-keys -t "$session" C-d
echo "smoke-repl: ok (answer and stats line shown)"
