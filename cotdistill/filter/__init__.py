"""Stage 2: decide, for every teacher trace, whether the student should learn from it, and why.

Checks, in funnel order (each one configurable, each a reason code when it rejects):
`invalid_record`, `contaminated`, `unfinished_thinking`, `truncated`, `no_final_answer`,
`no_answer`, `too_short`, `too_long`, `reasoning_too_long`, `answer_too_long`, `repetition`,
`no_label` / `unverifiable` / `verify_timeout` / `wrong`, `low_mean_logprob`, `low_token_logprob`,
`low_agreement`, then among the traces that passed everything: `duplicate` and `over_limit`
(at most K per problem in `selection_order`). A reasoning teacher's answer is read from the
text after its thinking (cotdistill/reasoning.py).

The core works on records without files: `summarize` (one trace -> a small `Summary`),
`decide` (all summaries -> reasons per trace) and `annotate` (trace + decision -> output row);
`filter_traces` chains them in memory. `run_filter` streams: pass 1 keeps only summaries,
pass 2 re-reads the files and writes every trace to exactly one of kept / rejected, so memory
does not grow with the size of the traces.

    cotdistill filter --traces runs/gen/traces.jsonl --out runs/filter --max-per-problem 2
"""

from cotdistill.filter.config import (
    CHECKS,
    GOLD_KEY,
    REASONING_TAIL,
    SKETCH_SIZE,
    FilterConfig,
    SelectionKey,
    trace_fields,
)
from cotdistill.filter.contamination import (
    Contamination,
    load_contamination,
    similarity,
    text_sketch,
    words_of,
)
from cotdistill.filter.decide import annotate, decide, sft_row
from cotdistill.filter.opening import PromptOpening
from cotdistill.filter.plots import plot_confidence, plot_reasoning_lengths
from cotdistill.filter.report import (
    build_report,
    funnel,
    funnel_table,
    majority_votes,
    reasoning_report,
    report_markdown,
)
from cotdistill.filter.shards import (
    OUTPUTS,
    PER_SHARD_KEYS,
    check_shard_set,
    merge_filtered,
    merge_reports,
    shard_traces,
)
from cotdistill.filter.stage import check_lengths_present, filter_traces, first_pass, run_filter
from cotdistill.filter.summary import (
    Summary,
    check_logprobs_present,
    confidence,
    invalid_summary,
    summarize,
)

__all__ = [
    "CHECKS", "Contamination", "FilterConfig", "GOLD_KEY", "OUTPUTS", "PER_SHARD_KEYS",
    "PromptOpening", "REASONING_TAIL", "SKETCH_SIZE", "SelectionKey", "Summary", "annotate",
    "build_report", "check_lengths_present", "check_logprobs_present", "check_shard_set",
    "confidence", "decide", "filter_traces", "first_pass", "funnel", "funnel_table",
    "invalid_summary", "load_contamination", "majority_votes", "merge_filtered",
    "merge_reports", "plot_confidence", "plot_reasoning_lengths", "reasoning_report",
    "report_markdown", "run_filter", "sft_row", "shard_traces", "similarity", "summarize",
    "text_sketch", "trace_fields", "words_of",
]
