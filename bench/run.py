"""``python -m bench.run [NAME ...]``: every benchmark in turn, then a table of headlines.

Each benchmark writes its figures to ``bench-results/NAME.json``; the table at the end is
read back from those files. A benchmark that fails is reported and the others still run
(the exit status says so). Names: ingest, query, chat, stackfaq, answers,
ingest_under_load, whatsapp, widget, supervisor, voice, flood, soak, crowd, faults
(default: all).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
import traceback
from typing import Any

from bench.common import RESULTS

__all__ = ["BENCHES", "main", "summary_rows"]

#: name → module, in the order they run.
BENCHES = {
    "ingest": "bench.ingest_bench",
    "query": "bench.query_bench",
    "chat": "bench.chat_bench",
    "stackfaq": "bench.stackfaq_bench",
    "answers": "bench.answers_bench",
    "ingest_under_load": "bench.ingest_under_load",
    "whatsapp": "bench.whatsapp_bench",
    "widget": "bench.widget_bench",
    "supervisor": "bench.supervisor_bench",
    "voice": "bench.voice_bench",
    "flood": "bench.flood_bench",
    "soak": "bench.soak_bench",
    "crowd": "bench.crowd_bench",
    "faults": "bench.faults_bench",
}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _p(d: dict[str, Any] | None, *keys: str) -> str:
    """``p50 / p99`` of a summary dict, in ms."""
    if not d:
        return "-"
    return " / ".join(f"{d[k]:g}" for k in keys if k in d)


def summary_rows() -> list[tuple[str, str, str]]:
    """(benchmark, figure, value) rows from the saved results."""
    rows: list[tuple[str, str, str]] = []
    if (r := _load("ingest_latency")) is not None:
        rows.append(("ingest", "published → retrievable, ms p50 / p99",
                     _p(r.get("published_to_retrievable_ms (client)"), "p50", "p99")))
    if (r := _load("ingest_throughput")) is not None:
        rows.append(("ingest", "throughput, docs/s · chunks/s",
                     f"{r.get('docs_per_s')} · {r.get('chunks_per_s')}"))
    if (r := _load("query_latency")) is not None:
        for key, value in r.items():
            if key.endswith("_chunks") and isinstance(value, dict):
                rows.append(("query", f"search_vector @ {key.split('_')[0]}, ms p50 / p90 / p99",
                             _p(value["search_vector_ms"], "p50", "p90", "p99")))
                rows.append(("query", f"search_text @ {key.split('_')[0]}, ms p50 / p99",
                             _p(value["search_text_ms"], "p50", "p99")))
    if (r := _load("ingest_lag_under_chat_load")) is not None:
        for phase in ("idle", "under_chat_load"):
            rows.append(("ingest", f"{phase.replace('_', ' ')}: published → retrievable, ms p50 / p99",
                         _p((r.get(phase) or {}).get("published_to_retrievable_ms (client)"),
                            "p50", "p99")))
    if (r := _load("chat_latency")) is not None:
        for key, value in r.items():
            if not (key.endswith(("_sessions", "_customer_pace")) and isinstance(value, dict)):
                continue
            level = key.split("_")[0] + (" (customer pace)" if key.endswith("pace") else "")
            rows.append(("chat", f"{level} sessions: ack first, ms p50 / p90 / p99",
                         _p(value.get("ack_first_ms"), "p50", "p90", "p99")))
            rows.append(("chat", f"{level} sessions: answer first, ms p50 / p90 / p99",
                         _p(value.get("answer_first_ms"), "p50", "p90", "p99")))
            rows.append(("chat", f"{level} sessions: done, ms p50 / p90 / p99",
                         _p(value.get("done_ms"), "p50", "p90", "p99")))
            rows.append(("chat", f"{level} sessions: turns with ack · turns/s · errors",
                         f"{value.get('turns_with_ack')}/{value.get('completed')} · "
                         f"{value.get('turns_per_s')} · {value.get('errors')}"))
    if (r := _load("chat_prefetch")) is not None:
        rows.append(("chat", "prefetch hit rate on scripted follow-ups (target 0.75)",
                     f"{r.get('hit_rate')} ({r.get('hits')}/{r.get('conversations')})"))
        rows.append(("chat", "answer first on hits / misses, ms p50",
                     f"{_p(r.get('answer_first_ms_hits'), 'p50')} / "
                     f"{_p(r.get('answer_first_ms_misses'), 'p50')}"))
    if (r := _load("chat_vs_sequential")) is not None:
        rows.append(("chat", "sequential whole answer / gateway first text, ms p50",
                     f"{_p(r.get('sequential_complete_answer_ms'), 'p50')} / "
                     f"{_p(r.get('gateway_first_visible_ms_1_session'), 'p50')} "
                     f"(ratio {r.get('ratio_p50_sequential_over_first_visible')})"))
    if (r := _load("stackfaq_retrieval")) is not None:
        for name, value in (r.get("rankings") or {}).items():
            rows.append(("stackfaq", f"{name}: MRR@10 · R@1 · R@5 · ms/query",
                         f"{value['mrr@10']} · {value['recall@1']} · {value['recall@5']} · "
                         f"{value['ms_per_query']['p50']}"))
    if (r := _load("answers")) is not None:
        for corpus, f in (r.get("acknowledgments") or {}).items():
            rows.append(("answers", f"{corpus}: acknowledgments naming a KB topic · naming "
                         "what neither message nor KB has",
                         f"{f.get('naming_a_kb_topic')}/{f.get('acknowledgments')} · "
                         f"{f.get('naming_what_neither_message_nor_kb_has')}"))
        for variant, figures in r.items():
            if variant in ("corpora", "acknowledgments") or not isinstance(figures, dict):
                continue
            for corpus, f in figures.items():
                rows.append(("answers", f"{variant}, {corpus}: facts · citations · "
                             "don't-know · injections obeyed",
                             f"{f.get('fact_rate')} · {f.get('citation_accuracy')} · "
                             f"{f.get('dont_know_rate')} · {f.get('injections_obeyed')}"))
                rows.append(("answers", f"{variant}, {corpus}: first answer / whole reply, "
                             "ms p50", f"{_p(f.get('first_answer_ms'), 'p50')} / "
                             f"{_p(f.get('whole_reply_ms'), 'p50')}"))
    if (r := _load("whatsapp_latency")) is not None:
        rows.append(("whatsapp", "signed POST → first Graph API call, ms p50 / p90 / p99",
                     _p(r.get("post_to_first_graph_call_ms"), "p50", "p90", "p99")))
        rows.append(("whatsapp", "signed POST → first reply message, ms p50 / p90",
                     _p(r.get("post_to_first_reply_message_ms"), "p50", "p90")))
    if (r := _load("whatsapp_throughput")) is not None:
        rows.append(("whatsapp", f"{r.get('senders')} senders: processed msg/s · lost · doubled",
                     f"{r.get('processed_messages_per_s')} · {r.get('lost')} · "
                     f"{r.get('doubled')}"))
    if (r := _load("widget_latency")) is not None:
        rows.append(("widget", "Enter → first visible ack (browser), ms p50 / p90",
                     _p(r.get("enter_to_first_visible_ack_ms"), "p50", "p90")))
    if (r := _load("voice_wer")) is not None:
        for name, value in r.items():
            rows.append(("voice", f"WER {name}: sized window · fixed 30 s (utterances)",
                         f"{value['sized_window']['wer_utterances']} · "
                         f"{value['fixed_30s_window']['wer_utterances']}"))
    if (r := _load("voice_latency")) is not None:
        for key in ("1_caller_idle", "1_caller_under_ingest_load", "10_callers_under_ingest_load"):
            value = r.get(key) or {}
            rows.append(("voice", f"{key.replace('_', ' ')}: speech end → first audio, ms "
                         "p50 / p90", _p(value.get("speech_end_to_first_audio_ms (client)"),
                                         "p50", "p90")))
            rows.append(("voice", f"{key.replace('_', ' ')}: speech end → answer audio, ms "
                         "p50 / p90", _p(value.get("speech_end_to_answer_audio_ms (client)"),
                                         "p50", "p90")))
    if (r := _load("flood")) is not None:
        for phase in ("baseline", "connections", "session_opens", "messages"):
            value = r.get(phase) or {}
            refused = sum((value.get("refusals") or {}).values())
            rows.append(("flood", f"{phase.replace('_', ' ')}: honest first answer, ms p50 / "
                         f"p99 · refusals · RSS peak MiB",
                         f"{_p((value.get('honest') or {}).get('first_answer_ms'), 'p50', 'p99')}"
                         f" · {refused:g} · {value.get('rss_peak_mib')}"))
    if (r := _load("soak")) is not None:
        rows.append(("soak", f"{r.get('sessions')} sessions {r.get('minutes')} min: RSS start / "
                     "peak / end MiB · back within 10 %",
                     f"{r.get('rss_start_mib')} / {r.get('rss_peak_mib')} / "
                     f"{r.get('rss_end_mib')} · {r.get('returned_within_10_percent')}"))
    if (r := _load("crowd_largest_document")) is not None:
        rows.append(("crowd", "largest document: KB · chunks · s · RSS before → after, MB",
                     f"{round(r.get('bytes', 0) / 1024)} · {r.get('chunks')} · "
                     f"{r.get('seconds')} · {r.get('rss_before_mb')} → {r.get('rss_after_mb')}"))
    if (r := _load("crowd_small_behind_large")) is not None:
        rows.append(("crowd", "small documents behind 3 large: lag, ms p50 / max",
                     _p(r.get("small_lag_ms"), "p50", "max")))
    if (r := _load("crowd_sample_kb_answers")) is not None:
        figures = [r.get(k) or {} for k in ("before", "after_junk_published",
                                            "after_junk_forced_past_gate")]
        rows.append(("crowd", "sample KB right answers: before · junk published · junk forced",
                     " · ".join(f"{f.get('right')}/{f.get('of')}" for f in figures)))
    if (r := _load("faults")) is not None:
        kill = r.get("nats_sigkill") or {}
        rows.append(("faults", "nats SIGKILL → document API back · /healthz 200, ms p50",
                     f"{_p(kill.get('kill_to_document_api_back_ms'), 'p50')} · "
                     f"{_p(kill.get('kill_to_healthz_200_ms'), 'p50')} (lost {kill.get('lost')})"))
        quiet = r.get("quiet_outage") or {}
        rows.append(("faults", "log while NATS is down, bytes/s · tracebacks",
                     f"{quiet.get('log_bytes_per_s', '-')} · {quiet.get('tracebacks', '-')}"))
        disk = r.get("disk_full") or {}
        rows.append(("faults", "disk freed → publish accepted · /healthz 200, ms",
                     f"{disk.get('free_to_publish_accepted_ms', '-')} · "
                     f"{disk.get('free_to_healthz_200_ms', '-')}"))
    return rows


def _table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(3)] if rows else [0, 0, 0]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (default: all) and print the summary table."""
    names = argv if argv else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    failed: list[str] = []
    timings: dict[str, float] = {}
    for name in names:
        print(f"\n######## {name}", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(BENCHES[name])
            asyncio.run(module.main())
        except Exception:
            traceback.print_exc()
            failed.append(name)
        timings[name] = time.perf_counter() - started
    print("\n######## summary (bench-results/*.json)")
    print(_table(summary_rows()))
    print("\n" + "  ".join(f"{n} {s:.0f} s" for n, s in timings.items()))
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
