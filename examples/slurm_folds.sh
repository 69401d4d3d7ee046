#!/usr/bin/env bash
# Cross-validation on a SLURM cluster: one fold per task of a job array, then the summary.
#
#   examples/slurm_folds.sh DATASET_DIR CONFIG WORKDIR [autoseg train options ...]
#   e.g. examples/slurm_folds.sh /shared/data/Dataset601_SpineXrayAP 2d /shared/autoseg_work --time-budget 4h
#
# Run it on the login node; it submits three jobs and returns:
#   1. prepare: plan (when the workdir has no plan yet) and preprocess CONFIG, once, so that the
#      fold tasks do not race for the same files;
#   2. a job array, task k trains fold k into WORKDIR/runs/<dataset>/CONFIG/fold_k; a task that is
#      requeued or submitted again resumes its fold from its last checkpoint (or skips it, finished);
#   3. after every fold: `autoseg train DATASET CONFIG all`, which finds every fold finished, predicts
#      each fold's validation cases and writes crossval.json.
# The dataset folder and WORKDIR must be on a file system every node sees. SLURM's SIGTERM before
# the time limit (--signal below) makes a fold save checkpoint_latest.pt and stop cleanly.
#
# Environment: NUM_FOLDS (default 5), SBATCH_OPTIONS (extra sbatch options for every job, e.g.
# "--partition gpu --account proj"), FOLD_RESOURCES (default: one GPU, 8 cores, 24 hours),
# AUTOSEG (the command, default: autoseg).
set -euo pipefail

if [ $# -lt 3 ]; then
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
dataset=$(realpath "$1") config=$2 workdir=$(realpath -m "$3")
shift 3
folds=${NUM_FOLDS:-5}
autoseg=${AUTOSEG:-autoseg}
resources=${FOLD_RESOURCES:---gres=gpu:1 --cpus-per-task=8 --time=24:00:00}
# shellcheck disable=SC2206  # word splitting of the option strings is intended
common=(${SBATCH_OPTIONS:-} --parsable --output="$workdir/slurm/%x_%A_%a.log")
extra=$(printf ' %q' "$@")
mkdir -p "$workdir/slurm"

fold_run="$workdir/runs/$(basename "$dataset")/$config/fold_\$k"
train_fold="k=\$SLURM_ARRAY_TASK_ID
if [ -e $fold_run/checkpoint_final.pt ]; then echo \"fold \$k is finished\"; exit 0; fi
resume=''
if [ -e $fold_run/checkpoint_latest.pt ] || [ -e $fold_run/checkpoint_best.pt ]; then resume=--resume; fi
exec $autoseg train $(printf '%q' "$dataset") $config \$k -w $(printf '%q' "$workdir") --num-folds $folds \$resume$extra"

prepare=$(sbatch "${common[@]}" --job-name=autoseg-prepare --cpus-per-task=8 --time=12:00:00 \
    --wrap "$autoseg preprocess $(printf '%q' "$dataset") $config -w $(printf '%q' "$workdir")")
# shellcheck disable=SC2086
array=$(sbatch "${common[@]}" --job-name=autoseg-folds --dependency="afterok:$prepare" --array="0-$((folds - 1))" \
    $resources --signal=B:TERM@300 --wrap "$train_fold")
# shellcheck disable=SC2086
summary=$(sbatch "${common[@]}" --job-name=autoseg-crossval --dependency="afterok:$array" $resources --wrap "$autoseg train $(printf '%q' "$dataset") $config all -w $(printf '%q' "$workdir") --num-folds $folds$extra")
echo "submitted: prepare $prepare, folds $array (array 0-$((folds - 1))), summary $summary; logs in $workdir/slurm"
