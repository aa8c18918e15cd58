"""The docs table of bench/compile.py's results (torch-free, so bench/report.py can import it)."""

from __future__ import annotations

from typing import Any


def _label(result: dict[str, Any]) -> str:
    c, compile_ = result["case"], result["compile"]
    label = f"{c['name']} ({c['size']} px, {c['steps']} steps, {c['dtype']}, {compile_['mode']}"
    label += ", freezing" if compile_["freezing"] else ""
    return label + (")" if compile_.get("vae", True) else ", UNet only)")


def compile_table(data: dict[str, Any]) -> str:
    """The docs table (bench/report.py): one row per case and batch size. "off" is a worker
    without compilation; "channels_last" the compiled worker's own eager forward (what its
    exact, LoRA and ControlNet batches run)."""
    lines = [
        "| case | batch | images/s off | images/s channels_last | images/s compiled | compiled / off "
        "| compile s | engine GiB off / compiled | max 8-bit levels vs off (share changed) | MFU off / compiled |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["results"]:
        memory = r.get("engine_memory_gib", {})
        for p in r["points"]:
            e, k, d = p["eager"], p["compiled"], p["drift"]
            cl = p.get("eager_channels_last", {}).get("images_per_s")
            mfu = f"{e['mfu']} / {k['mfu']}" if e.get("mfu") is not None else "-"
            lines.append(
                f"| {_label(r)} | {p['batch']} | {e['images_per_s']:.3g} | {f'{cl:.3g}' if cl else '-'} "
                f"| {k['images_per_s']:.3g} | {p['speedup']:.2f}x | {p['compile_s']} "
                f"| {memory.get('eager', '-')} / {memory.get('compiled', '-')} "
                f"| {d['max_levels']} ({d['share_values_changed']:.2%}) | {mfu} |"
            )
    machines = {
        str(r["machine"].get("gpu") or r["machine"].get("cpu") or r["machine"]["platform"]) for r in data["results"]
    }
    loads = ", ".join(f"{r['case']['name']} {r['machine']['load_average_1_5_15'][0]}" for r in data["results"])
    recompiles = sum(r["recompiles_after_warmup"] for r in data["results"])
    lines += [
        "",
        f"Measured {data['measured_at']} on {', '.join(sorted(machines))}; load average at the end of each case: "
        f"{loads}; recompiles after warm-up: {recompiles}.",
    ]
    return "\n".join(lines)
