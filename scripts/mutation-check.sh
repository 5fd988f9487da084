#!/usr/bin/env bash
# Mutation check of the Guarantees table (docs/guarantees.md): for each mutation in
# scripts/mutations.txt, break the product on a copy of the working tree, run the row's tests
# there and report whether they failed (they must). Not run in CI: it takes as long as the
# tests it runs.
#
#   scripts/mutation-check.sh [ROW ...]      # all rows, or only the named ones
#
# Integration tests use ORCHESTRATOR_TEST_REDIS_URL (default DB 8 here) and CI=true (a
# missing service fails instead of skipping, so a skip never counts as a kill).
# Verdicts: KILLED (tests failed: good), SURVIVED (tests passed: the guarantee's tests cannot
# see this break), STALE (the sed matched nothing: update scripts/mutations.txt).
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
list="$root/scripts/mutations.txt"
report=${MUTATION_REPORT:-$root/mutation-report.txt}
export ORCHESTRATOR_TEST_REDIS_URL=${ORCHESTRATOR_TEST_REDIS_URL:-redis://127.0.0.1:6379/8}
export CI=${CI:-true}
python=${PYTHON:-python3}
wanted=" $* "
status=0

echo "mutation check $(date -u +%Y-%m-%dT%H:%MZ) ($(git -C "$root" rev-parse --short HEAD 2>/dev/null) + working tree)" | tee "$report"
# read the whole list first: editing it during a run must not shift the rows still to come
mapfile -t lines <"$list"
for line in "${lines[@]}"; do
    [[ -z "${line// }" || "$line" == \#* ]] && continue
    row=$(awk -F' ;; ' '{print $1}' <<<"$line")
    file=$(awk -F' ;; ' '{print $2}' <<<"$line")
    expr=$(awk -F' ;; ' '{print $3}' <<<"$line")
    tests=$(awk -F' ;; ' '{print $4}' <<<"$line")
    if [[ -n "${*:-}" && "$wanted" != *" $row "* ]]; then
        continue
    fi
    copy=$(mktemp -d /tmp/orch-mutant.XXXXXX)
    # the working tree as it is (uncommitted changes included), without git metadata
    tar -C "$root" --exclude=.git --exclude=.venv --exclude=.mypy_cache --exclude=.ruff_cache \
        --exclude=.pytest_cache --exclude=__pycache__ -cf - . | tar -C "$copy" -xf -
    sed -E -i -e "$expr" "$copy/$file"
    if cmp -s "$root/$file" "$copy/$file"; then
        verdict=STALE
        status=1
    else
        log="$copy/pytest.log"
        # shellcheck disable=SC2086 # the tests field is a list of pytest arguments
        (cd "$copy" && timeout 1500 "$python" -m pytest -q -x -p no:cacheprovider $tests >"$log" 2>&1)
        rc=$?
        if [[ $rc -eq 0 ]]; then
            verdict=SURVIVED
            status=1
        elif [[ $rc -eq 1 ]]; then
            verdict=KILLED
        else
            verdict="ERROR(pytest rc=$rc)"  # collection error, no tests, timeout: not a kill
            status=1
        fi
        failed=$(grep -E '^(FAILED|ERROR) ' "$log" | head -3 | tr '\n' ' ')
        tail -n 40 "$log" >"/tmp/orch-mutant-$row.log"
    fi
    echo "$row: $verdict ($file: $expr) ${failed:-}" | tee -a "$report"
    failed=""
    rm -rf "$copy"
done
exit $status
