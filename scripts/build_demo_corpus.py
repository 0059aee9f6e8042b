#!/usr/bin/env python3
"""Build the demo-model training corpus shipped in ``medmerge/resources/demo/corpus/``.

Dev-time only: this is the one place that reads the shared public datasets
(``../shared/data`` relative to the repository root, or ``--data``). Its output is
committed, so ``medmerge.demo`` never needs ``shared/`` at run time.

Outputs (JSON Lines, UTF-8, one object per line, every line has ``id``, ``split``
(``train`` | ``heldout``), ``source`` and ``text``):

* ``general.jsonl``  - HellaSwag contexts + gold endings (MIT).
* ``clinical.jsonl`` - MTS-Dialog train dialogues + note sections (CC BY 4.0) and
  PubMedQA train abstracts (MIT).
* ``instruct.jsonl`` - instruction/response pairs templated from HellaSwag items that
  are *not* in ``general.jsonl``; extra fields ``instruction``, ``response``, ``template``;
  ``text`` is the pair rendered in the demo chat format.
* ``LICENSES.md``    - sources, licences, attribution, changes.

Selection and the heldout split use a salted SHA-256 of each record id, so the output
is byte-identical on every run and independent of Python's hash seed or version.
``indiana_cxr`` is deliberately not used: its licence (CC BY-NC-ND) forbids derivatives.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "medmerge" / "resources" / "demo" / "corpus"

SALT = "medmerge-demo-corpus-v1"
HELDOUT_FRACTION = 0.1

# Sizes keep the three files at a few hundred KB in total: enough text for three
# clearly different tiny models, small enough to ship in the wheel.
N_GENERAL = 400
N_INSTRUCT = 300
N_MTS = 180
N_PUBMEDQA = 35
# Instruct items are drawn from HellaSwag contexts up to this length: the long WikiHow
# contexts would make the file large without adding instruction-following signal.
MAX_INSTRUCT_CTX = 200

# Readable names for MTS-Dialog's normalised section headers.
SECTION_NAMES = {
    "GENHX": "History of present illness", "FAM/SOCHX": "Family and social history",
    "PASTMEDICALHX": "Past medical history", "CC": "Chief complaint", "PASTSURGICAL": "Past surgical history",
    "ALLERGY": "Allergies", "ROS": "Review of systems", "MEDICATIONS": "Medications",
    "ASSESSMENT": "Assessment", "EXAM": "Examination", "DIAGNOSIS": "Diagnosis", "DISPOSITION": "Disposition",
    "PLAN": "Plan", "EDCOURSE": "Emergency department course", "IMMUNIZATIONS": "Immunizations",
    "IMAGING": "Imaging", "GYNHX": "Gynecologic history", "PROCEDURES": "Procedures",
    "OTHER_HISTORY": "Other history", "LABS": "Labs",
}

# Must match the chat template in medmerge.demo (a test checks the two agree).
CHAT_FORMAT = "### Instruction:\n{instruction}\n### Response:\n{response}</s>"


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def rank(key: str) -> str:
    """Deterministic pseudo-random sort key for a record id."""
    return hashlib.sha256(f"{SALT}:{key}".encode()).hexdigest()


def pick(records: list[dict], n: int, key: str = "id") -> list[dict]:
    """The ``n`` records with the smallest salted hash, in that (stable) order."""
    return sorted(records, key=lambda r: rank(str(r[key])))[:n]


def split_of(record_id: str) -> str:
    """``heldout`` for a deterministic ~10% of ids, ``train`` otherwise."""
    h = int(hashlib.sha256(f"{SALT}:split:{record_id}".encode()).hexdigest()[:8], 16)
    return "heldout" if h / 0xFFFFFFFF < HELDOUT_FRACTION else "train"


def clean(text: str) -> str:
    """Normalise line ends and trailing blanks; the sources mix CRLF and LF."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


def hellaswag_text(item: dict) -> str:
    return f"{item['activity_label']}: {clean(item['ctx'])} {clean(item['endings'][item['label']])}"


def general_records(hellaswag: list[dict]) -> list[dict]:
    return [{"id": f"hellaswag/{it['id']}", "split": split_of(f"hellaswag/{it['id']}"), "source": "hellaswag",
             "text": hellaswag_text(it)} for it in hellaswag]


def clinical_records(mts: list[dict], pubmedqa: list[dict]) -> list[dict]:
    out = []
    for r in mts:
        section = SECTION_NAMES.get(r["section_header"], r["section_header"])
        text = f"{clean(r['input'])}\n\n{section}: {clean(r['target'])}"
        out.append({"id": f"mts_dialog/{r['id']}", "source": "mts_dialog", "text": text})
    for r in pubmedqa:
        out.append({"id": f"pubmedqa/{r['id']}", "source": "pubmedqa",
                    "text": f"{clean(r['question'])}\n{clean(r['context'])}"})
    for r in out:
        r["split"] = split_of(r["id"])
    return [{"id": r["id"], "split": r["split"], "source": r["source"], "text": r["text"]} for r in out]


def instruct_pair(item: dict) -> tuple[str, str, str]:
    """One (template, instruction, response) from a HellaSwag item; template chosen by hash."""
    ctx, gold = clean(item["ctx"]), clean(item["endings"][item["label"]])
    kind = int(rank(f"template:{item['id']}")[:8], 16) % 3
    if kind == 0:
        return "complete", f"Complete the following text.\n{ctx}", gold
    if kind == 1:
        return "activity", f"Name the activity described in this text.\n{ctx} {gold}", clean(item["activity_label"])
    letters = "ABCD"
    options = "\n".join(f"{letters[i]}. {clean(e)}" for i, e in enumerate(item["endings"]))
    return ("choice", f"Choose the most plausible continuation.\n{ctx}\n{options}",
            f"{letters[item['label']]}. {gold}")


def instruct_records(hellaswag: list[dict]) -> list[dict]:
    out = []
    for it in hellaswag:
        template, instruction, response = instruct_pair(it)
        rid = f"hellaswag/{it['id']}"
        out.append({"id": rid, "split": split_of(rid), "source": "hellaswag", "template": template,
                    "instruction": instruction, "response": response,
                    "text": CHAT_FORMAT.format(instruction=instruction, response=response)})
    return out


def write_jsonl(path: Path, records: list[dict]) -> int:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    path.write_bytes(data)
    return len(data)


def build(data: Path, out: Path) -> dict[str, dict]:
    """Write the three corpus files and LICENSES.md into ``out``; return per-file stats."""
    hellaswag = sorted(read_jsonl(data / "hellaswag" / "validation.jsonl"), key=lambda r: rank(r["id"]))
    # General and instruct take disjoint HellaSwag items, so no heldout instruction was
    # ever seen as plain text by the base model.
    general_items = hellaswag[:N_GENERAL]
    instruct_items = [it for it in hellaswag[N_GENERAL:] if len(it["ctx"]) <= MAX_INSTRUCT_CTX][:N_INSTRUCT]
    mts = pick(read_jsonl(data / "mts_dialog" / "train.jsonl"), N_MTS)
    pubmedqa = pick(read_jsonl(data / "pubmedqa" / "train.jsonl"), N_PUBMEDQA)

    files = {
        "general.jsonl": general_records(general_items),
        "clinical.jsonl": clinical_records(mts, pubmedqa),
        "instruct.jsonl": instruct_records(instruct_items),
    }
    out.mkdir(parents=True, exist_ok=True)
    stats = {}
    for name, records in files.items():
        size = write_jsonl(out / name, records)
        heldout = sum(r["split"] == "heldout" for r in records)
        stats[name] = {"records": len(records), "heldout": heldout, "bytes": size}
    (out / "LICENSES.md").write_text(licenses_md(stats), encoding="utf-8")
    return stats


MIT_TEXT = """\
Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE."""


def licenses_md(stats: dict[str, dict]) -> str:
    rows = "\n".join(f"| `{n}` | {s['records']} | {s['heldout']} | {s['bytes']:,} |" for n, s in stats.items())
    return f"""# Demo corpus: sources, licences, attribution

Text used to train the three tiny demo models (`medmerge demo-models`). Generated by
`scripts/build_demo_corpus.py` from the project's copies of public datasets; regenerate
with `python scripts/build_demo_corpus.py`. Selection and the `train`/`heldout` split are
deterministic (salted SHA-256 of the record id, ~{HELDOUT_FRACTION:.0%} heldout).

| file | records | heldout | bytes |
|---|---|---|---|
{rows}

**Evaluation caveat.** All HellaSwag text here comes from the HellaSwag *validation* set,
which is also an evaluation set. Models trained on this corpus (the demo models) are
contaminated for HellaSwag: do not report their HellaSwag scores as benchmark numbers.

## general.jsonl — HellaSwag (MIT)

- Source: HellaSwag, Zellers, Holtzman, Bisk, Farhadi, Choi. *HellaSwag: Can a Machine
  Really Finish Your Sentence?* ACL 2019. https://github.com/rowanz/hellaswag
  (MIT, `LICENSE` @ `a29ff8e9a04bba4bd6588223785ce105328adc57`).
- Bytes taken from the text rendering at https://github.com/klosax/hellaswag_text_data
  @ `1105d370f8340eac3c63a91fd1fa58e8999f9505` (`hellaswag_val_full.txt.bz2`; MIT,
  Copyright (c) 2023 klosax), via the project's normalised 2,000-item validation subsample.
- Changes: {N_GENERAL} items selected; each line is `"<activity_label>: <ctx> <gold ending>"`;
  line ends normalised; wrong endings dropped.

## clinical.jsonl — MTS-Dialog (CC BY 4.0) and PubMedQA (MIT)

- MTS-Dialog: Ben Abacha, Yim, Fan, Lin. *An Empirical Study of Clinical Note Generation
  from Doctor-Patient Encounters.* EACL 2023. https://github.com/abachaa/MTS-Dialog
  @ `3ff0801933608d6f570468c13125125fb5cabdea`, `Main-Dataset/MTS-Dialog-TrainingSet.csv`.
  Licence: Creative Commons Attribution 4.0 International (CC BY 4.0),
  https://creativecommons.org/licenses/by/4.0/. No warranties are given.
  Changes: {N_MTS} training pairs selected; each line is the dialogue, a blank line, then
  `"<section name>: <section text>"` (section header codes such as `GENHX` spelled out);
  line ends normalised (CRLF to LF) and trailing spaces removed. Otherwise text unchanged.
- PubMedQA (PQA-L): Jin, Dhingra, Liu, Cohen, Lu. *PubMedQA: A Dataset for Biomedical
  Research Question Answering.* EMNLP-IJCNLP 2019. https://github.com/pubmedqa/pubmedqa
  @ `1cbae8e92f72f20c8d3747cbb3bf5bc53554d997`, `data/ori_pqal.json` (MIT, Copyright (c) 2019
  pubmedqa). Changes: {N_PUBMEDQA} items of the non-test half selected; each line is the
  question followed by the abstract contexts joined with newlines; labels and long answers dropped.

## instruct.jsonl — instruction/response pairs derived from HellaSwag (MIT)

- Source: the HellaSwag validation items above (same licence and attribution); {N_INSTRUCT}
  items disjoint from those in `general.jsonl`, with contexts of at most {MAX_INSTRUCT_CTX} characters.
- Changes: each item is turned into one pair by one of three templates (chosen by hash):
  `complete` ("Complete the following text." + context -> gold ending), `activity`
  ("Name the activity described in this text." + context and ending -> activity label),
  `choice` ("Choose the most plausible continuation." + context and the four lettered
  endings -> gold letter and ending). `text` is the pair in the demo chat format
  `### Instruction:\\n...\\n### Response:\\n...</s>`.
- No other non-clinical instruction data with responses is available in the project's data
  copies (IFEval has prompts only; the other sets are medical), so HellaSwag is the only source.

## Not used

- `indiana_cxr` (CC BY-NC-ND 4.0): the licence forbids derivatives.

## Licence texts

### HellaSwag

```
MIT License

Copyright (c) 2019 Rowan Zellers

{MIT_TEXT}
```

### hellaswag_text_data (the copy the HellaSwag text was read from)

```
MIT License

Copyright (c) 2023 klosax

{MIT_TEXT}
```

### PubMedQA

```
MIT License

Copyright (c) 2019 pubmedqa

{MIT_TEXT}
```

### MTS-Dialog

Creative Commons Attribution 4.0 International (CC BY 4.0):
https://creativecommons.org/licenses/by/4.0/legalcode
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    if not (args.data / "README.md").exists():
        print(f"error: {args.data} does not look like shared/data", file=sys.stderr)
        return 2
    for name, s in build(args.data, args.out).items():
        print(f"{name}: {s['records']} records ({s['heldout']} heldout), {s['bytes']:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
