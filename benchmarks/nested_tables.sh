#!/usr/bin/env bash
# The nested leave-one-group-out tables of W (8 groups), W-Be (37 groups) and Ta (12 groups, FitSNAP's
# group weights) in one command: descriptors, one leave-one-group-out crossval per set, then
# benchmarks/nested_logo.py over the three runs (every group, coverage and width together, and EV and
# width by support-score decile). Steps whose output exists are skipped, so an interrupted run resumes.
#
#     bash benchmarks/nested_tables.sh DATA OUT     # DATA holds tungsten-dft/ and fitsnap-ta/
#
# Extra arguments after OUT go to every popsdask command (e.g. --n-workers 2 --threads-per-worker 1).
set -euo pipefail
data=${1:?usage: nested_tables.sh DATA OUT [popsdask options]}
out=${2:?usage: nested_tables.sh DATA OUT [popsdask options]}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
cd "$out"
[ -d w/descriptors.zarr ] || popsdask descriptors "$data/tungsten-dft/W_dft.extxyz.xz" -o w/descriptors.zarr \
    --twojmax 4 --test-fraction 0.3 --quiet "$@"
[ -d wbe/descriptors.zarr ] || popsdask descriptors "$data/tungsten-dft/W_dft.extxyz.xz" \
    "$data/tungsten-dft/WBe_dft.extxyz.xz" -o wbe/descriptors.zarr --twojmax 4 --quiet "$@"
[ -d ta/descriptors.zarr ] || popsdask descriptors --fitsnap-input "$data/fitsnap-ta/Ta-example.in" \
    -o ta/descriptors.zarr --quiet "$@"
for set in w wbe ta; do
    [ -f "$set/crossval/crossval.json" ] || popsdask crossval "$set/descriptors.zarr" --group-by group \
        -o "$set/crossval" --ev-curve none --no-random-split --quiet --overwrite "$@"
done
python "$here/nested_logo.py" W=w/crossval W-Be=wbe/crossval Ta=ta/crossval \
    --tolerance energy=0.001,force=0.001 --out nested
