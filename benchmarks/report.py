"""Markdown tables from suite results (printed by benchmarks.run, pasted into docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any

GIB = 1024**3


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "n/a"
        return f"{x:.{nd}f}"
    return str(x)


def _pm(run: dict[str, Any] | None) -> str:
    if not run:
        return ""
    return f"±{run['spread'] * 50:.0f}%" if run.get("n", 0) > 1 else "(1 run)"


def cpu_table(res: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str, str]] = []
    pre = res.get("preprocess", {})
    for label, text in (("typical", "typical photos, 1 tile each"), ("multi_tile", "multi-tile photos (5-13 tiles)")):
        if label in pre:
            p = pre[label]
            rows.append((f"preprocessing, images/s ({text}, {p['images']} photos)", _f(p["humanaes"], 1), _f(p["reference"], 1),
                         f"x{p['speedup']:.2f}", f"spread {_pm(p['humanaes_runs'])} / {_pm(p['reference_runs'])}"))
    if "loads" in res:
        L = res["loads"]
        ls = res["load_seconds"]
        rows.append(("model load, s (fp16 file on disk, warm page cache)", _f(ls["humanaes"]), _f(ls["reference"]), f"x{ls['speedup']:.1f}",
                     f"ours -> bf16 {_pm(L['humanaes']['load_s'])}; reference = fp32 construct+init+load_state_dict {_pm(L['reference']['load_s'])}"))
        rows.append(("  - ours from the original layout / ours to fp32, s", _f(ls["humanaes_original_layout"]), "", "", f"fp32: {_f(ls['humanaes_fp32'])} s"))
        rows.append(("peak RSS during load / checkpoint size", _f(L["humanaes"]["peak_rss_delta_over_checkpoint"]),
                     _f(L["reference"]["peak_rss_delta_over_checkpoint"]), "", f"target <= 1.2 (checkpoint {L['humanaes']['checkpoint_bytes'] / GIB:.2f} GiB)"))
        if L["humanaes"].get("peak_rss_load_and_score_bytes"):
            rows.append(("peak RSS, load + score 1 photo (fresh process), GiB", _f(L["humanaes"]["peak_rss_load_and_score_bytes"] / GIB),
                         _f(L["reference"]["peak_rss_load_and_score_bytes"] / GIB), "", "ours bf16 fast mode; reference fp32 score()"))
    for key, label in (("fast_seconds_per_image", "fast / score(), s per image (1 tile, batch 1)"),
                       ("metavoter_seconds_per_image", "metavoter / run_metavoter(), s per image")):
        c = res.get(key)
        if not c:
            continue
        rows.append((label, f"{_f(c['humanaes'])} ({_f(c['humanaes_best'])})", f"{_f(c['reference'])} ({_f(c['reference_best'])})",
                     f"x{c['speedup']:.2f} (x{c['speedup_best']:.2f})",
                     f"median (best) of {c['humanaes_runs']['n']}; ours bf16 {_pm(c['humanaes_runs'])} vs reference fp32 {_pm(c['reference_runs'])}"))
        rows.append(("  - same dtype: ours fp32, s per image", f"{_f(c['humanaes_fp32'])} ({_f(c['humanaes_fp32_best'])})",
                     f"{_f(c['reference'])} ({_f(c['reference_best'])})", f"x{c['speedup_same_dtype']:.2f} (x{c['speedup_same_dtype_best']:.2f})", ""))
    mof = res.get("metavoter_over_fast")
    if mof:
        rows.append(("metavoter cost / fast cost", f"{_f(mof['humanaes'])} ({_f(mof['humanaes_best'])})", f"{_f(mof['reference'])} ({_f(mof['reference_best'])})", "",
                     f"ours fp32; ours bf16 {_f(mof['humanaes_bf16'])} ({_f(mof['humanaes_bf16_best'])}); target ours <= 1.3: "
                     f"{'met' if mof['target_met'] else 'NOT met'} (best: {'met' if mof['target_met_best'] else 'NOT met'})"))
    sw = res.get("fast_latency_by_max_tiles")
    if sw:
        for m, p in sw["points"].items():
            if m.startswith("reference"):
                continue
            ref = sw["points"].get(f"reference_fp32_{m}")
            rows.append((f"fast, max_tiles {m} ({p['tiles']} tiles), s per image", _f(p["median"]), _f(ref["median"]) if ref else "", "",
                         f"ours bf16 {_pm(p)}; peak RSS +{p['peak_rss_delta_bytes'] / 2**20:.0f} MiB"))
    ab = res.get("vision_chunking_ab")
    if ab:
        a, b = ab["after_auto_chunks"], ab["before_one_chunk"]
        rows.append((f"library change: vision encoder in chunks, {ab['tiles']}-tile image, s (after / before)", _f(a["median"]), _f(b["median"]),
                     f"x{b['median'] / a['median']:.2f}",
                     f"reference column = before (one chunk of {b['chunk_tiles']}); chunks of {a['chunk_tiles']}: CPU {_f(a['cpu_median'])} vs {_f(b['cpu_median'])} s, "
                     f"page faults {a['minor_faults_median']:.0f} vs {b['minor_faults_median']:.0f}, peak RSS +{a['peak_rss_delta_bytes'] / 2**20:.0f} vs +{b['peak_rss_delta_bytes'] / 2**20:.0f} MiB"))
    ab = res.get("vision_chunking_ab_batch")
    if ab:
        a, b = ab["after_auto_chunks"], ab["before_one_chunk"]
        n = res["batched_throughput"]["images"]
        rows.append((f"library change: vision encoder in chunks, batch {ab['batch']} of 1-tile photos, images/s (after / before)",
                     _f(n / a["median"], 3), _f(n / b["median"], 3), f"x{b['median'] / a['median']:.2f}",
                     f"reference column = before (one chunk of {b['chunk_tiles']}); chunks of {a['chunk_tiles']}: CPU {_f(a['cpu_median'])} vs {_f(b['cpu_median'])} s, "
                     f"page faults {a['minor_faults_median']:.0f} vs {b['minor_faults_median']:.0f}, peak RSS +{a['peak_rss_delta_bytes'] / 2**20:.0f} vs +{b['peak_rss_delta_bytes'] / 2**20:.0f} MiB"))
    bt = res.get("batched_throughput")
    if bt:
        for bs, p in bt["by_batch_size"].items():
            rows.append((f"fast, batch {bs}, images/s ({bt['images']} photos)", _f(p["images_per_s"], 3), "", "",
                         f"ours bf16 {_pm(p)}; peak RSS +{p['peak_rss_delta_bytes'] / 2**20:.0f} MiB"))
    tp = res.get("threads_probe")
    if tp:
        keys = [k for k in tp if k != "loadavg"]
        rows.append(("threads probe: fast 1 tile bf16, s (" + " vs ".join(f"{k} thr" for k in keys) + ")",
                     " / ".join(_f(tp[k]["median"]) for k in keys), "", "", f"load average {tp['loadavg'][0]:.1f}"))
    out = ["| measure | humanaes | reference | speedup | notes |", "|---|---:|---:|---:|---|"]
    out += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    st = res.get("stages_seconds_per_call")
    if st:
        names = list(st)
        stages = sorted({k for v in st.values() for k in v if k != "total"}, key=lambda k: ["decode", "tiles + normalise", "preprocess", "vision encoder", "LLM body", "vocabulary head"].index(k) if k in ("decode", "tiles + normalise", "preprocess", "vision encoder", "LLM body", "vocabulary head") else 9)
        out += ["", "Where the time goes (seconds per call, mean of the timed repeats):", "",
                "| stage | " + " | ".join(n.replace("_", " ") for n in names) + " |", "|---|" + "---:|" * len(names)]
        for stage in stages + ["total"]:
            out.append(f"| {stage} | " + " | ".join(_f(st[n].get(stage), 3) for n in names) + " |")
    return "\n".join(out)


def gpu_table(res: dict[str, Any]) -> str:
    out = ["| model | mode | max_tiles | batch | images/s | s per batch | peak GPU GiB | notes |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for model, block in res.get("models", {}).items():
        for row in block.get("rows", []):
            out.append(
                f"| {model} | {row['side']} {row['mode']} | {row['max_tiles']} | {row['batch']} | {_f(row.get('images_per_s'), 2)} | "
                f"{_f(row.get('median_s'), 3)} | {_f(row.get('peak_gpu_bytes', 0) / GIB if row.get('peak_gpu_bytes') else None, 1)} | {row.get('note', '')} |"
            )
    return "\n".join(out)
