"""Print the README's result tables from the committed JSON in bench/results/.

python -m bench.report
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def batching_table(data: dict[str, Any]) -> str:
    raw = {p["batch"]: p["images_per_s"] for p in data["raw_pipeline"]}
    lines = [
        f"{data['model']} ({data['size']} px, {data['steps']} steps, {data['dtype']}"
        + (f", {data['machine']['gpu']}" if data.get("machine", {}).get("gpu") else "")
        + f"), measured {data['measured_at']}:",
        "",
        "| setup | clients | images/s | p50 s | p95 s | mean batch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| raw pipeline, batch {b} | - | {v:.3g} | | | {b} |" for b, v in sorted(raw.items())]
    for p in data["service"]:
        lines.append(
            f"| service, max_batch={p['max_batch']} | {p['clients']} | {p['images_per_s']:.3g} | "
            f"{p['latency_p50_s']} | {p['latency_p95_s']} | {p['mean_batch_images']} |"
        )
    lines += ["", "Summary: " + ", ".join(f"{k} = {v}" for k, v in data["summary"].items())]
    busiest = [p for p in data["service"] if p.get("cpu_ms_per_image")]
    if busiest:
        top = max(busiest, key=lambda p: (p["max_batch"], p["clients"]))
        split = ", ".join(f"{role} {ms}" for role, ms in top["cpu_ms_per_image"].items())
        raw_cpu = {p["batch"]: p.get("cpu_ms_per_image") for p in data["raw_pipeline"]}
        nearest = min(raw_cpu, key=lambda b: abs(b - (top["mean_batch_images"] or 1)))
        lines += [
            "",
            f"CPU ms per image at {top['clients']} clients, max_batch={top['max_batch']}: {split} "
            f"(total {sum(top['cpu_ms_per_image'].values()):.1f}); raw pipeline at batch {nearest}: {raw_cpu[nearest]}",
        ]
    return "\n".join(lines)


def chaos_table(data: dict[str, Any]) -> str:
    lines = [
        "| scenario | acknowledged | succeeded | lost | stuck | duplicates | succeeded w/o objects | "
        "not succeeded (codes) | worst recovery s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in data["scenarios"].items():
        codes = ", ".join(f"{k} {v}" for k, v in r["not_succeeded_by_code"].items()) or "-"
        lines.append(
            f"| {name} | {r['acknowledged']} | {r['succeeded']} | {r['lost']} | {r['stuck']} | {r['duplicates']} | "
            f"{r['succeeded_without_objects']} | {codes} | {r.get('worst_recovery_s', '-')} |"
        )
    return "\n".join(lines)


def _pct(rate: float) -> str:
    return f"{rate * 100:.0f}%"


def shapes_table(data: dict[str, Any]) -> str:
    """The built-in shapes model: what the scorer reads back, per condition."""
    low, high = data["img2img"]["strengths"]
    rows = [
        (f"guidance {data['guidance']:g} (served default)", "prompt", data["guidance_served"]),
        ("guidance 7", "prompt", data["guidance_7"]),
        ("guidance 1 (no CFG)", "prompt", data["guidance_1"]),
        ("same, negative prompt = the shape's colour", "prompt", data["negative_colour"]),
        (f"img2img strength {low:g}, from another scene", "init image", data["img2img"]["strength_low_vs_init"]),
        (f"img2img strength {low:g}, from another scene", "prompt", data["img2img"]["strength_low_vs_prompt"]),
        (f"img2img strength {high:g}, from another scene", "init image", data["img2img"]["strength_high_vs_init"]),
        (f"img2img strength {high:g}, from another scene", "prompt", data["img2img"]["strength_high_vs_prompt"]),
    ]
    lines = [
        f"| {data['prompts']} held-out prompts | scored against | colour | background | shape | size | position "
        "| all five |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, against, r in rows:
        lines.append(
            f"| {name} | {against} | {_pct(r['colour'])} | {_pct(r['background'])} | {_pct(r['kind'])} | "
            f"{_pct(r['size'])} | {_pct(r['position'])} | {_pct(r['followed'])} |"
        )
    seeds, negative = data["seeds"], data["negative_colour_open"]
    lines += [
        "",
        f"Negative prompts on prompts that leave the colour open ({negative['prompts']}, "
        f"{negative['images_per_colour']} seeds): a negative naming a colour cuts the share of images in that colour "
        f"from {_pct(negative['named_colour_share_without'])} to {_pct(negative['named_colour_share_with_negative'])} "
        f"(mean over the {len(negative['colours'])} colours).",
        "",
        f"Seeds: the same seed gives identical pixels ({'yes' if seeds['same_seed_identical'] else 'NO'}); "
        "another seed changes "
        f"{seeds['other_seed_pixels_differ']} of 8 images; {seeds['prompts']} prompts that leave position and size "
        f'open ("a red circle"), {seeds["seeds_per_prompt"]} seeds each, get {seeds["mean_distinct_position_size"]} '
        f"distinct (position, size) readings on average (at least {seeds['min_distinct_position_size']}), with the "
        f"colour right in {_pct(seeds['colour'])}.",
    ]
    return "\n".join(lines)


def main() -> None:
    for name in ("batching-tiny.json", "batching-sd15.json", "batching-sd15-cuda.json"):
        data = _load(name)
        if data:
            print(batching_table(data), end="\n\n")
    chaos = _load("chaos.json")
    if chaos:
        print(chaos_table(chaos), end="\n\n")
    shapes = _load("shapes.json")
    if shapes:
        print(shapes_table(shapes))


if __name__ == "__main__":
    main()
