#!/usr/bin/env bash
# Reproduces the README's performance figures: run as root on an idle
# machine, from the repository root, after `cargo build --release`.
# Starts its own broker on a temporary socket; prints one JSON line per
# measurement.
set -euo pipefail
bin=./target/release
dir=$(mktemp -d); trap 'kill $broker 2>/dev/null; rm -rf "$dir"' EXIT
sock=$dir/spacer.sock
start=$(date +%s%N)
# The default per-uid cap (64 connections) would refuse most of the 512
# and 1,000-client loads: they all come from root.
$bin/spacer-broker --socket "$sock" --log-format json --max-connections-per-uid 2000 2>"$dir/log" & broker=$!
until grep -q '"event":"start"' "$dir/log" 2>/dev/null; do sleep 0.01; done
echo "{\"startup_us_reported\": $(grep -o '"startup_us":[0-9]*' "$dir/log" | cut -d: -f2)}"
b() { $bin/spacer --socket "$sock" bench "$@" --json; }
runs=${RUNS:-3}
echo "# scaling: rooms(uts), rooms(net), rooms(all) at concurrency 1 2 8 64 512"
for load in --uts --net --all; do
  for c in 1 2 8 64 512; do
    case $load in --uts) n=20000;; *) n=3000;; esac
    (( n < c * 4 )) && n=$(( c * 4 ))
    echo "{\"load\":\"$load\",\"result\":$(b $load --requests $n --concurrency $c)}"
  done
done
echo "# ratio to the in-process floor at concurrency 2 ($runs runs)"
for load in --net --all --uts; do
  for i in $(seq "$runs"); do
    echo "{\"load\":\"$load\",\"result\":$(b $load --raw --requests 3000 --concurrency 2)}"
  done
done
echo "# subspaces (user+pid) ($runs runs)"
for c in 1 2; do
  for i in $(seq "$runs"); do
    echo "{\"load\":\"--subspace\",\"result\":$(b --subspace --requests 600 --concurrency $c)}"
  done
done
echo "# 10,000 net namespaces in a row, in ten blocks of 1,000"
for i in $(seq 10); do
  echo "{\"load\":\"--net block $i\",\"result\":$(b --net --requests 1000 --concurrency 2 --warmup 0)}"
done
echo "# memory"
$bin/spacer --socket "$sock" bench --idle-clients 1000 --json
echo "# private mode against the broker"
b --uts --private --requests 5000
