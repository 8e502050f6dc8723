"""The attack table as Markdown, and the picture: original / pixelated / reconstructions at several ε."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from models.attacks.inversion import InversionDecoder, reconstruct
from models.markdown import replace_between_markers
from models.privacy.gaussian import gaussian_sigma
from models.privacy.mechanism import sensitivity_for


def _pct(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "–"
    return f"{100 * cell['mean']:.1f}" + (f" ± {100 * cell['std']:.1f}" if cell.get("n", 1) > 1 else "")


def _num(cell: dict[str, Any] | None, digits: int = 2) -> str:
    if not cell:
        return "–"
    return f"{cell['mean']:.{digits}f}" + (f" ± {cell['std']:.{digits}f}" if cell.get("n", 1) > 1 else "")


def markdown_table(out: dict[str, Any]) -> str:
    """One line per (encoder, ε) plus the reference lines; leakage as rank-1 / mAP per judge."""
    judges = out["judges"]
    head = ["encoder", "ε", "σ", "search mAP %", "search rank-1 %", "ID acc. linear %", "linkage rank-1 %", "PSNR dB", "SSIM"]
    head += [f"leak rank-1 / mAP % ({j})" for j in judges]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in out["rows"]:
        cells = [r["encoder"], str(r["epsilon"]), f"{r['sigma']:.3f}"]
        cells += [_pct(r.get("search", {}).get("mAP")), _pct(r.get("search", {}).get("rank1")), _pct(r.get("id_acc_linear"))]
        cells += [_pct(r.get("linkage_rank1")), _num(r.get("psnr")), _num(r.get("ssim"), 3)]
        for j in judges:
            leak = r.get("leakage", {}).get(j)
            cells.append(f"{_pct(leak['rank1'])} / {_pct(leak['mAP'])}" if leak else "–")
        lines.append("| " + " | ".join(cells) + " |")
    for ref in out.get("references", []):
        cells = [f"*reference: {ref['reference']}*", "", "", "", "", "", ""]
        cells += [f"{ref['psnr']:.2f}" if "psnr" in ref else "–", f"{ref['ssim']:.3f}" if "ssim" in ref else "–"]
        cells += [f"{100 * ref['leakage'][j]['rank1']:.1f} / {100 * ref['leakage'][j]['mAP']:.1f}" for j in judges]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(path: Path, out: dict[str, Any], *, table: str = "attack-table") -> None:
    """Replace the table between ``<!-- {table}:start -->`` and ``<!-- {table}:end -->`` in ``path``
    (:func:`models.markdown.replace_between_markers`: a page without them is refused, a missing file gets the table)."""
    replace_between_markers(path, f"<!-- {table}:start -->", f"<!-- {table}:end -->", markdown_table(out))


def save_picture(
    path: Path, images: Any, features: Any, decoders: dict[float, InversionDecoder], *, delta: float, title: str, people: int = 6
) -> None:
    """Columns: a few test people; rows: original, 16×8-pixelated, reconstruction at each kept ε (one noise draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.attacks.suite import pixelate_16x8, release

    picks = torch.linspace(0, len(images.query) - 1, people).long()
    originals = images.query[picks]
    rows = [("original", originals), ("pixelated 16×8", pixelate_16x8(originals))]
    for epsilon in sorted(decoders, key=lambda e: -e):
        sigma = gaussian_sigma(epsilon, delta, sensitivity_for(features.domain))
        records = release(features.query[picks], sigma, seed=3000)
        label = "ε = ∞" if math.isinf(epsilon) else f"ε = {epsilon:g}"
        rows.append((f"reconstruction, {label}", reconstruct(decoders[epsilon], records)))
    fig, axes = plt.subplots(len(rows), people, figsize=(people * 1.1, len(rows) * 2.0))
    for r, (label, batch) in enumerate(rows):
        for c in range(people):
            ax = axes[r, c]
            ax.imshow(batch[c].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=6)
    fig.suptitle(f"feature inversion of released records: {title}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
