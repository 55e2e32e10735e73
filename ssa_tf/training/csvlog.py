"""CSV logs that survive a kill: rows a dead run wrote after its checkpoint are dropped."""

from __future__ import annotations

import csv
import os


def keep_rows(path, keep):
    """Rewrite the CSV at ``path`` with the rows ``keep`` accepts; a row a killed
    process left half-written is dropped."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, []
        for row in reader:
            try:
                if None not in row.values() and keep(row):
                    rows.append(row)
            except (TypeError, ValueError):
                continue
    tmp = path + ".tmp"
    if fields is None:  # killed before the header was written
        os.remove(path)
        return
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
