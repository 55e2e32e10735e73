"""The headline table of README.md and benchmarks/reports/ACCURACY.md, made from the
recorded results (``benchmarks/results/*.jsonl``), never copied by hand; and README's
table of the rules, rendered from the registry's locality cards (a new rule file shows
up in it when this runs).

    python -m benchmarks.tables            # rewrite the tables between their markers
    python -m benchmarks.tables --check    # exit 1 when a document's table is stale

Each cell is the mean ± standard deviation of the validation accuracy (last epoch) over
the seeds recorded for that row's grid variant; tests/test_docs.py checks that both
documents hold exactly what this renders.
"""

from __future__ import annotations

import os
import sys

from benchmarks import records
from benchmarks.grids import GRIDS
from ssa_tf import atomic_files
from ssa_tf.methods import registry

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DOCUMENTS = (os.path.join(REPO, "README.md"),
             os.path.join(HERE, "reports", "ACCURACY.md"))
BEGIN, END = "<!-- headline table: python -m benchmarks.tables -->", "<!-- end of table -->"
RULES_BEGIN = "<!-- rules table: python -m benchmarks.tables -->"
RULES_END = "<!-- end of rules table -->"

SHORT, LONG, HEADS = "learned_5ep", "learned_20ep", "heads_20ep"
RECIPE = "heads_recipe"  # heads_20ep's rows under a step decay of the rate
# (what the row is, its variant at 5 epochs, its variant at 20 epochs): a variant of
# SHORT / LONG by name, (grid, name) for another grid's, None where not run
ROWS = (
    ("bp", "bp (glorot head, lr 1e-3)", "bp (glorot head, lr 1e-3)"),
    ("svd-bp (backprop through the same SVD network, head and loss terms)",
     "svd-bp (glorot head, beta 0.01, gamma 0, lr 3e-4)",
     "svd-bp (glorot head, beta 0.01, gamma 0, lr 3e-4)"),
    ("**ssa** (chain, lr 1e-3)", "ssa (glorot head, beta 0.01, gamma 0, lr 1e-3; chain)",
     "ssa (glorot head, beta 0.01, gamma 0, lr 1e-3; chain)"),
    ("dfa (tuned: lr 3e-4; 1e-3 at 20 epochs)", "dfa (zero head, lr 3e-4)",
     "dfa, lr 1e-3 (its better rate at 20 epochs)"),
    ("dkp (feedback learned from e and h_i; its rate 1e-3)", "dkp, feedback lr 1e-3",
     "dkp, feedback lr 1e-3"),
    ("dkp at the repository's feedback rate 1e-4",
     "dkp (zero head, lr 3e-4; feedback Adam 1e-4, x0.8 an epoch)",
     "dkp (zero head, lr 3e-4; feedback Adam 1e-4, x0.8 an epoch)"),
    ("ssa-dkp (ssa, the chain's matrices learned as dkp's)",
     "ssa-dkp (chain's matrices, learned)", "ssa-dkp (chain's matrices, learned)"),
    # modules that learn from their own trained heads (grid heads_20ep)
    ("local conv heads, plain layers (DGL-style, lr 1e-3)", None,
     (HEADS, "local conv heads (DGL-style), plain layers")),
    ("local conv heads, plain layers, glorot head (ssa's; the one-difference control)", None,
     (HEADS, "local conv heads, plain layers, glorot head")),
    ("ssa, local conv heads, beta 0 (the `local_heads` preset before heads_recipe)", None,
     (HEADS, "ssa, local conv heads, beta 0")),
    ("local linear heads, plain layers (lr 1e-3)", None,
     (HEADS, "local linear heads, plain layers")),
    ("ssa, local conv heads of depth 2, beta 0", None,
     (HEADS, "ssa, local conv heads depth 2, beta 0")),
    ("ssa, local linear heads (beta 0.01)", None, (HEADS, "ssa, local linear heads")),
    ("local later-shaped heads, plain layers (AugLocal-style, depth 3; glorot head)", None,
     (HEADS, "local later-shaped heads (AugLocal-style), depth 3, plain layers")),
    ("ssa, local later-shaped heads, depth 3, beta 0", None,
     (HEADS, "ssa, local later-shaped heads, depth 3, beta 0")),
    ("svd-bp at beta 0 (the alignment term's cost)", None,
     (HEADS, "svd-bp, beta 0 (lr 3e-4)")),
    # a direct error term beside the later-shaped heads (route local_global)
    ("local later-shaped heads + DFA's direct term, plain layers", None,
     (HEADS, "local later-shaped heads + DFA's direct term, depth 3, plain layers")),
    ("ssa, local later-shaped heads + its direct term, beta 0", None,
     (HEADS, "ssa, local later-shaped heads + its direct term, depth 3, beta 0")),
    # the same rows with the rate x0.1 after epoch 15 (grid heads_recipe)
    ("bp, rate x0.1 after epoch 15", None, (RECIPE, "bp (glorot head, lr 1e-3), decay at 15")),
    ("local later-shaped heads, plain layers, rate x0.1 after epoch 15", None,
     (RECIPE, "local later-shaped heads (AugLocal-style), depth 3, plain layers, "
              "decay at 15")),
    ("ssa, local later-shaped heads, beta 0, rate x0.1 after epoch 15", None,
     (RECIPE, "ssa, local later-shaped heads, depth 3, beta 0, decay at 15")),
    ("**ssa, local later-shaped heads, beta 0, random feedback factors**, rate x0.1 after "
     "epoch 15 (`--preset=local_heads`)", None,
     (RECIPE, "ssa, local later-shaped heads, depth 3, beta 0, random feedback factors, "
              "decay at 15")),
)


def _cells(grid_name, out):
    rows = records.summarize(grid_name, records.load_all_results(out, grid_name))
    return {r["name"]: (r["last"][0], len(r["seeds"])) for r in rows}


def _where(variant, default_grid):
    """(grid, name) of a row's variant (None: not run)."""
    if variant is None or isinstance(variant, tuple):
        return variant
    return default_grid, variant


def render(out=HERE) -> str:
    """The table, as Markdown."""
    found = {}
    lines = ["| rule | sequential | weight transport | feedback | 5 epochs | 20 epochs |",
             "|---|---|---|---|---|---|"]
    for label, five, twenty in ROWS:
        places = [_where(five, SHORT), _where(twenty, LONG)]
        grid, name = next(p for p in places if p is not None)
        variant = GRIDS[grid]["variants"][name]
        rule = registry.get(variant.get("rule.name") or GRIDS[grid]["base"]["rule.name"])
        card = rule.card({k[len("rule."):]: v for k, v in variant.items()
                          if k.startswith("rule.") and k[len("rule."):] in rule.options})
        cells = []
        for place in places:
            if place is not None and place[0] not in found:
                found[place[0]] = _cells(place[0], out)
            value, seeds = (found[place[0]].get(place[1], ("not run", 0)) if place
                            else ("not run", 0))
            cells.append(value if seeds in (0, 3)
                         else f"{value} ({seeds} seed{'s' if seeds > 1 else ''})")
        lines.append(f"| {label} | {'yes' if card.sequential else 'no'} | "
                     f"{card.weight_transport} | {card.feedback} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def replace(text, table, begin=BEGIN, end=END) -> str:
    """``text`` with the table between the markers replaced (ValueError: no markers)."""
    if begin not in text or end not in text:
        raise ValueError(f"no {begin!r} ... {end!r} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{table}\n{end}{tail}"


def main(argv):
    table = render()
    stale = []
    for path in DOCUMENTS:
        with open(path) as f:
            text = f.read()
        new = replace(text, table)
        if path.endswith("README.md"):
            new = replace(new, registry.rules_table(), RULES_BEGIN, RULES_END)
        if new != text:
            stale.append(path)
            if "--check" not in argv:
                atomic_files.write_text(path, new)
    if "--check" in argv and stale:
        print(f"stale table in {', '.join(stale)}; run python -m benchmarks.tables",
              file=sys.stderr)
        return 1
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
