"""Markdown tables for the README, read from the recorded results (so each figure there is one of these).

    python bench/report.py encoders encoders_blip encoders_altclip encoders_blip2 vqa

Each name is a bench/results/<name>.json written by bench/encoders.py or bench/vqa.py (rows made by
harness.compare_row).
"""

from __future__ import annotations

import json
import sys

from harness import RESULTS


def ratio(row: dict, key: str = "ratio") -> str:
    if row.get(key) is None:
        return ""
    return f"{row[key]:.2f}x ({row[key + '_min']:.2f}–{row[key + '_max']:.2f})"


def check(row: dict) -> str:
    extra = {k: v for k, v in row.items() if k.startswith(("cosine", "max_prob", "same_", "tokens_"))}
    return ", ".join(f"{k.replace('_vs_reference_fp32', '')} {v}" for k, v in extra.items())


def table(name: str) -> str:
    data = json.loads((RESULTS / f"{name}.json").read_text())
    lines = [f"`{data['command']}` → `bench/results/{name}.json` (load average at the end "
             f"{data['machine'].get('loadavg_at_end')}):", "",
             "| family | task | dtype | ours | transformers (same dtype) | ours / transformers: median (min–max) | goal "
             "| transformers fp32 | ours / transformers fp32 | check vs transformers fp32 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        if r.get("rounds") is None:  # not a comparison (e.g. BLIP-2 load memory)
            continue
        goal = f"≥ {r['goal']}: {'met' if r['met'] else '**missed**'}" if "goal" in r else ""
        lines.append(f"| {r['family']} | {r['task']} | {r['dtype']} | {r['ours']} | {r['reference']} | {ratio(r)} | "
                     f"{goal} | {r.get('reference_fp32', '')} | {ratio(r, 'ratio_vs_fp32')} | {check(r)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(table(name), end="\n\n")
