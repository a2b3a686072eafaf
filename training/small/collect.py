"""Collect a soi-small sweep: one table, ``sweep.json``, and the adapter the pre-registered rule picks.

    python -m training.small.collect WORK OUT VARIANT ...

The rule (training/small/NOTES.md, written before the sweep ran): among variants whose bf16 adapter
fits the 25 MB budget, the highest mean of validation division and major-group accuracy after the
last epoch.  The chosen adapter's weights are split into parts of at most 15 MiB (``cat`` joins them).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

MAX_ADAPTER_BYTES = 25_000_000
PART_BYTES = 15 * 2**20


def load(work: Path, name: str) -> dict:
    folder = work / name
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    history = json.loads((folder / "history.json").read_text()) if (folder / "history.json").is_file() else []
    return {"history": history, "validation": None, "unfinished": True}


def main(argv: list[str]) -> int:
    work, out = Path(argv[0]), Path(argv[1])
    names = [v.split("|", 1)[0] for v in argv[2:]]
    rows = {}
    for name in names:
        res = load(work, name)
        adapter = work / name / "adapter" / "adapter_model.safetensors"
        res["adapter_bytes"] = adapter.stat().st_size if adapter.is_file() else None
        res["sets"] = next(v.split("|", 1)[1] for v in argv[2:] if v.split("|", 1)[0] == name)
        rows[name] = res
    print(f"{'variant':<14} {'div':>6} {'mg':>6} {'F1':>6} {'nll':>6} {'MB':>5} {'train s':>7}  per-epoch div/mg")
    for name, res in rows.items():
        v = res.get("validation") or {}
        curve = " ".join(f"{h['division_acc']:.3f}/{h['major_group_acc']:.3f}" for h in res.get("history", []))
        mb = f"{res['adapter_bytes'] / 1e6:.1f}" if res["adapter_bytes"] else "-"
        print(f"{name:<14} {v.get('division_acc', float('nan')):>6.4f} {v.get('major_group_acc', float('nan')):>6.4f} "
              f"{v.get('division_macro_f1', float('nan')):>6.4f} {v.get('division_nll', float('nan')):>6.3f} {mb:>5} "
              f"{res.get('train_s', float('nan')):>7}  {curve}")
    eligible = {n: r for n, r in rows.items() if r.get("validation") and r["adapter_bytes"]
                and r["config"]["train_on"] == "train"
                and r["adapter_bytes"] <= MAX_ADAPTER_BYTES}
    chosen = max(eligible, key=lambda n: (eligible[n]["validation"]["division_acc"]
                                          + eligible[n]["validation"]["major_group_acc"]) / 2) if eligible else None
    print(f"CHOSEN {chosen}")
    (out / "sweep.json").write_text(json.dumps({"chosen": chosen, "variants": rows}, indent=2) + "\n")
    returned = [n for n in os.environ.get("RETURN", "").split(",") if n in rows] + ([chosen] if chosen else [])
    with open(out / "logs.txt", "w") as fh:
        dmon = work / "dmon.txt"
        fh.write("===== nvidia-smi dmon\n" + (dmon.read_text(errors="replace") if dmon.is_file() else "none\n"))
        for name in names:
            log = work / name / "log.txt"
            fh.write(f"===== {name}\n" + (log.read_text(errors="replace")[-6000:] if log.is_file() else "no log\n"))
    for name in dict.fromkeys(returned):
        adapter = work / name / "adapter"
        if not (adapter / "adapter_model.safetensors").is_file():
            continue
        shutil.copy2(adapter / "adapter_config.json", out / f"{name}.adapter_config.json")
        data = (adapter / "adapter_model.safetensors").read_bytes()
        for i in range(0, len(data), PART_BYTES):
            (out / f"{name}.adapter_model.safetensors.part{i // PART_BYTES}").write_bytes(data[i:i + PART_BYTES])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
