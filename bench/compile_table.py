"""The docs table of bench/compile.py's results (torch-free, so bench/report.py can import it)."""

from __future__ import annotations

from typing import Any


def compile_table(data: dict[str, Any]) -> str:
    """The docs table (bench/report.py): one row per case and batch size."""
    lines = [
        "| case | batch | eager images/s | compiled images/s | speed-up | compile s | peak GiB eager / compiled "
        "| max 8-bit levels (share changed) | MFU eager / compiled |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["results"]:
        c = r["case"]
        label = f"{c['name']} ({c['size']} px, {c['steps']} steps, {c['dtype']}, {r['compile']['mode']}"
        label += ", freezing" if r["compile"]["freezing"] else ""
        label += ")" if r["compile"].get("vae", True) else ", UNet only)"
        for p in r["points"]:
            e, k, d = p["eager"], p["compiled"], p["drift"]
            mfu = f"{e['mfu']} / {k['mfu']}" if e.get("mfu") is not None else "-"
            lines.append(
                f"| {label} | {p['batch']} | {e['images_per_s']:.3g} | {k['images_per_s']:.3g} | {p['speedup']:.2f}x "
                f"| {p['compile_s']} | {e['peak_memory_gib']} / {k['peak_memory_gib']} "
                f"| {d['max_levels']} ({d['share_values_changed']:.2%}) | {mfu} |"
            )
    machines = {str(r["machine"].get("gpu") or r["machine"]["platform"]) for r in data["results"]}
    loads = ", ".join(f"{r['case']['name']} {r['machine']['load_average_1_5_15'][0]}" for r in data["results"])
    recompiles = sum(r["recompiles_after_warmup"] for r in data["results"])
    lines += [
        "",
        f"Measured {data['measured_at']} on {', '.join(sorted(machines))}; load average at the end of each case: "
        f"{loads}; recompiles after warm-up: {recompiles}.",
    ]
    return "\n".join(lines)
