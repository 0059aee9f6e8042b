"""Dev-time: build the small evaluation sample shipped for the demo from ../shared/data.

The sample keeps the local-data layout the task YAMLs read (``<dataset>/<split>.jsonl``), so
``medmerge evaluate --data-dir sample`` and ``--data-dir ../shared/data`` run the same tasks.
Deterministic: the first records of each file (the MMLU dev split whole). The package never
reads ../shared at run time; only this script does.

    python scripts/build_eval_sample.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "medmerge" / "resources" / "eval_sample"
FILES = {  # file: records kept (per subject for MMLU test)
    "mmlu/test.jsonl": 12, "mmlu/dev.jsonl": None, "mmlu_pro_health/test.jsonl": 24,
    "medmcqa/validation.jsonl": 24, "medqa/test.jsonl": 24, "pubmedqa/test.jsonl": 24,
    "pubmedqa/train.jsonl": 8, "hellaswag/validation.jsonl": 24, "ifeval/input_data.jsonl": 24,
}
LICENSES = """# Evaluation sample: sources and licences

A few records of each public benchmark, for `make demo` (offline). Numbers computed on it are
smoke-test numbers, not benchmark results. Taken from the normalised copies described in the
project's shared data (provenance per file there), first records of each file.

| folder | dataset | licence | attribution |
|---|---|---|---|
| mmlu | MMLU (Hendrycks et al., ICLR 2021), medical subjects | MIT | hendrycks/test |
| mmlu_pro_health | MMLU-Pro (Wang et al., NeurIPS 2024), category health | MIT | TIGER-AI-Lab/MMLU-Pro |
| medmcqa | MedMCQA (Pal et al., CHIL 2022), dev set | MIT | medmcqa/medmcqa |
| medqa | MedQA USMLE 4-option (Jin et al., 2021) | MIT | jind11/MedQA |
| pubmedqa | PubMedQA PQA-L (Jin et al., EMNLP 2019) | MIT | pubmedqa/pubmedqa |
| hellaswag | HellaSwag (Zellers et al., ACL 2019), validation | MIT | rowanz/hellaswag |
| ifeval | IFEval (Zhou et al., 2023) prompts | Apache-2.0 | google-research/google-research, instruction_following_eval |
| mts_dialog | MTS-Dialog (Ben Abacha et al., EACL 2023): dialogue -> note section; the shortest pairs (dialogue <= 600 characters, section <= 300), duplicates dropped; `train` from its train split, `test` from test1 | CC BY 4.0 | abachaa/MTS-Dialog |

The `mts_dialog` files are the fine-tuning demo's data (phase two): short inputs so that SFT and
generation on the tiny demo models finish on 2 cores.
"""

#: MTS-Dialog records kept for the phase-two demo: split file -> (out split, count)
MTS = {"train.jsonl": ("train", 64), "test1.jsonl": ("test", 16)}


def mts_sample(shared: Path) -> None:
    """The shortest distinct MTS-Dialog pairs, in file order (deterministic)."""
    for src, (split, n) in MTS.items():
        rows = [json.loads(line) for line in (shared / "mts_dialog" / src).read_text(encoding="utf-8").split("\n") if line]
        seen, kept = set(), []
        for r in rows:
            key = (r["input"].strip(), r["target"].strip())
            if len(r["input"]) <= 600 and len(r["target"]) <= 300 and r["target"].strip() and key not in seen:
                seen.add(key)
                kept.append({"id": r["id"], "split": split, "input": r["input"], "target": r["target"],
                             "section_header": r.get("section_header")})
            if len(kept) == n:
                break
        out = OUT / "mts_dialog" / f"{split}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = ap.parse_args()
    for rel, n in FILES.items():
        rows = [json.loads(line) for line in (args.shared / rel).read_text(encoding="utf-8").split("\n") if line]
        if rel == "mmlu/test.jsonl":
            per: dict[str, int] = {}
            kept = []
            for r in rows:
                if per.get(r["subject"], 0) < n:
                    per[r["subject"]] = per.get(r["subject"], 0) + 1
                    kept.append(r)
            rows = kept
        elif n is not None:
            rows = rows[:n]
        out = OUT / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    mts_sample(args.shared)
    (OUT / "LICENSES.md").write_text(LICENSES)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
