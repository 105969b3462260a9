#!/usr/bin/env bash
# Suite-wide leak scan (docs/faults.md, "Leaks"): searches every log the test harnesses
# collected under DIR/logs for every secret value they recorded in DIR/values (one per
# line). A hit names the file, the line and the value's length and first two
# characters, never the value. An empty collection fails: a scan of nothing proves
# nothing.
#
#   scripts/leak-scan.sh DIR        scan DIR (as `make test` does after `cargo test`)
#   scripts/leak-scan.sh --selftest plant a value in a log and check the scan fails
set -euo pipefail

# Values shorter than this would match by chance (the harnesses' own MIN_LEN).
MIN_LEN=8

scan() {
    local dir=$1
    local values="$dir/values" logs="$dir/logs"
    [[ -d $dir ]] || { echo "leak-scan: no directory $dir" >&2; return 2; }
    local patterns
    patterns=$(mktemp)
    # Long enough values only, each once, cut to their first 256 characters (a test
    # stores an 8 MiB value; a log holding the value holds its start); the pattern file
    # stays out of any output.
    if [[ -f $values ]]; then
        awk -v min="$MIN_LEN" 'length($0) >= min { v = substr($0, 1, 256); if (!seen[v]++) print v }' \
            "$values" >"$patterns"
    fi
    local nvalues nfiles
    nvalues=$(wc -l <"$patterns")
    nfiles=$( (find "$logs" -type f 2>/dev/null || true) | wc -l)
    echo "leak-scan: $nvalues secret values, $nfiles log files in $dir"
    if ((nvalues == 0 || nfiles == 0)); then
        rm -f "$patterns"
        echo "leak-scan: FAILED: nothing collected (is SIDEKEY_LEAK_DIR reaching the harnesses?)" >&2
        return 1
    fi
    local hits=0 file line text
    # -F fixed strings, -n line numbers, -a binary logs as text; -H names the file.
    while IFS=: read -r file line text; do
        hits=$((hits + 1))
        # Which value matched, told by length and first two characters only.
        while IFS= read -r v; do
            if [[ $text == *"$v"* ]]; then
                echo "leak-scan: LEAK in $file line $line: a value of length ${#v} starting '${v:0:2}'" >&2
            fi
        done <"$patterns"
    done < <(find "$logs" -type f -print0 | xargs -0 -r grep -FnaH -f "$patterns" || true)
    rm -f "$patterns"
    if ((hits > 0)); then
        echo "leak-scan: FAILED: $hits log lines hold a secret value" >&2
        return 1
    fi
    echo "leak-scan: ok, no secret value in any log"
}

selftest() {
    local t
    t=$(mktemp -d)
    trap 'rm -rf "$t"' RETURN
    mkdir "$t/logs"
    printf 'planted-secret-Zx91q\nshort\n' >"$t/values"
    printf 'an ordinary line\n' >"$t/logs/clean.err"
    # Nothing planted yet: the scan passes.
    scan "$t" >/dev/null 2>&1 || { echo "leak-scan selftest: a clean log failed" >&2; return 1; }
    # A short value (below MIN_LEN) in a log is not a hit.
    printf 'status short\n' >>"$t/logs/clean.err"
    scan "$t" >/dev/null 2>&1 || { echo "leak-scan selftest: a short value was a hit" >&2; return 1; }
    # Planted: the scan fails, names file and line, and does not print the value.
    printf 'line one\nlogin ok token=planted-secret-Zx91q\n' >"$t/logs/agent.err"
    local out
    if out=$(scan "$t" 2>&1); then
        echo "leak-scan selftest: a planted value was not found" >&2
        return 1
    fi
    [[ $out == *"agent.err line 2"* && $out == *"length 20 starting 'pl'"* ]] ||
        { echo "leak-scan selftest: the report does not name the file and line: $out" >&2; return 1; }
    [[ $out != *planted-secret* ]] ||
        { echo "leak-scan selftest: the report prints the value" >&2; return 1; }
    # Nothing collected fails too.
    rm -f "$t/values"
    if scan "$t" >/dev/null 2>&1; then
        echo "leak-scan selftest: an empty value list passed" >&2
        return 1
    fi
    rm -rf "$t/logs"
    printf 'planted-secret-Zx91q\n' >"$t/values"
    if scan "$t" >/dev/null 2>&1; then
        echo "leak-scan selftest: an empty log directory passed" >&2
        return 1
    fi
    echo "leak-scan selftest: ok (clean passes, planted value fails, empty collections fail)"
}

case "${1:-}" in
--selftest) selftest ;;
"") echo "usage: $0 DIR | --selftest" >&2; exit 2 ;;
*) scan "$1" ;;
esac
