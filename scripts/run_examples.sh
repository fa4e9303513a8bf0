#!/usr/bin/env bash
# Runs every example once with its default settings and keeps each one's JSON line, so that the
# README's example table is generated from measurements (scripts/readme_figures.py):
#
#   scripts/run_examples.sh benches/results/examples-lavapipe-mesa25-2core.jsonl
#   python3 scripts/readme_figures.py benches/results/examples-lavapipe-mesa25-2core.jsonl
#
# Each line is appended as its example finishes, so a failure late in the run keeps what came
# before; a failing example is reported and the others still run. Takes about 20 minutes on a
# 2-core machine with lavapipe (bert_finetune alone about 6).
set -uo pipefail

out=${1:?usage: scripts/run_examples.sh OUT.jsonl}
cd "$(dirname "$0")/.."
cargo build --release --all-features --examples || exit 1
: >"$out"
bin=target/release/examples
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

run() {
  local name=$1
  shift
  echo "== $name $*" >&2
  local line
  if line=$("$bin/$name" "$@" 2>"$tmp/$name.err" | tail -n 1) && [ "${line:0:1}" = "{" ]; then
    echo "$line" >>"$out"
  else
    echo "run_examples: $name failed; the end of its output:" >&2
    tail -n 5 "$tmp/$name.err" >&2
    failed=1
  fi
}

run lenet_mnist --save "$tmp/lenet.ckpt"
run mnist_mlp
run char_transformer
run char_lstm
run rnn_sequence
run linear_regression
run predict --model "$tmp/lenet.ckpt"
run finetune --model "$tmp/lenet.ckpt"
run prune --model "$tmp/lenet.ckpt"
run distill --teacher "$tmp/lenet.ckpt"
run quantize --model "$tmp/lenet.ckpt" --out "$tmp/quantize"
run custom_op
run embed --bench 10
run generate --compare
run bert_finetune --out "$tmp/bert_finetune"
run gpt2_train --preset small --shards "$tmp/gpt2-shards"
exit $failed
