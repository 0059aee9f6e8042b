"""The model card (README.md) written beside every merged checkpoint: Hugging Face's YAML front matter
(library, tags) and a Markdown body titled with the checkpoint's name."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from medmerge import __version__
from medmerge.merge.recipe import Recipe

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n.*?^---[ \t]*(\r?\n|\Z)", re.DOTALL | re.MULTILINE)


def model_card(recipe: Recipe, parents: dict[str, dict], name: str) -> str:
    """The card of the checkpoint ``name`` (its directory's final name, never a temporary one) merged by
    ``recipe`` from ``parents`` (``{ref: {path, weights: {file: sha256}}}``)."""
    m = recipe.method
    rows = "\n".join(
        f"| `{ref}` | `{fname}` | `{digest}` |"
        for ref, info in parents.items()
        for fname, digest in sorted(info["weights"].items())
    )
    seed = f"\nRandom seed: `{recipe.random_seed}` (torch reseeded per tensor from seed and tensor name).\n" \
        if recipe.random_seed is not None else ""
    ref = f" ([paper]({m.reference_url}))" if m.reference_url else ""
    return f"""---
library_name: transformers
tags:
- merge
- medmerge
- {m.name}
---
# {name}

A merge of {len(parents)} checkpoint(s) made with medmerge {__version__} on
{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, using **{m.pretty_name}**{ref}.

## Method

```
{m.formula or m.name}
```

## Recipe

This YAML (also in `mergekit_config.yml`) reproduces the merge with `medmerge merge` or
`mergekit-yaml`:

```yaml
{recipe.to_yaml().rstrip()}
```
{seed}
## Parents

| model | weight file | sha256 |
|---|---|---|
{rows}
"""


def card_body(card: str) -> str:
    """``card`` without its YAML front matter (the leading ``---`` ... ``---`` block Hugging Face reads): what a
    reader is shown, e.g. as an MLflow model version's description. A card without front matter is unchanged."""
    return _FRONT_MATTER.sub("", card, count=1).lstrip("\r\n")
