"""``reid-privacy-curve``: search quality and attack success against the privacy budget ε.

Clean query features are matched against a gallery released through the Gaussian
mechanism at each ε (δ fixed). Per ε and encoder, averaged over several noise draws:
rank-1, rank-5, mAP, the paper's ID-accuracy attacker trained on the protected gallery,
and a linkage attack (rank-1 of protected gallery records matched against each other
across cameras); rows of grouping ``track`` match against each track's averaged records
(``--no-tracks`` skips them). Writes JSON, optionally a calibration file, a PNG plot and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from models.checkpoint import load_encoder
from models.cli.eval import split_features
from models.privacy.curve import DEFAULT_EPSILONS, GROUPINGS, Scoring, calibration, curve_for, markdown_table, write_markdown


def plot(results: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, all_rows in results.items():
        rows = [r for r in all_rows if r.get("grouping", "record") == "record"]
        finite = [r for r in rows if r["epsilon"] != "inf"]
        xs = [float(r["epsilon"]) for r in finite]
        for ax, key, label in ((axes[0], "mAP", "mAP"), (axes[1], "id_acc_linear", "ID accuracy (linear attacker)")):
            if key not in finite[0]:
                continue
            ys = [100 * r[key]["mean"] for r in finite]
            err = [100 * r[key]["std"] for r in finite]
            line = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
            clean = next((r for r in rows if r["epsilon"] == "inf"), None)
            if clean is not None and key in clean:
                ax.axhline(100 * clean[key]["mean"], ls="--", lw=1, color=line[0].get_color())
            ax.set_xscale("log")
            ax.set_xlabel("ε per record (δ = 1e-5); dashed: no noise")
            ax.set_ylabel(f"{label} %")
            ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    axes[0].set_title("Search quality: clean queries vs protected gallery")
    axes[1].set_title("Identity attacker trained on the protected gallery")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reid-privacy-curve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="encoder checkpoint (the stage-one model)")
    p.add_argument("--baseline", type=Path, help="baseline encoder checkpoint evaluated side by side")
    p.add_argument("--data", type=Path, required=True, help="Market-1501-layout folder")
    p.add_argument("--json", type=Path, required=True, help="write per-ε results here")
    p.add_argument("--epsilons", type=float, nargs="+", default=DEFAULT_EPSILONS)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--draws", type=int, default=3, help="noise draws per ε (at least 3 for the published table)")
    p.add_argument("--no-attacker", action="store_true", help="skip the ID-accuracy attacker (faster)")
    p.add_argument("--no-tracks", action="store_true", help="skip the track-level rows (grouping: track)")
    p.add_argument("--pooled-tracks", action="store_true", help="add pooled_track rows: each track released as one noisy mean (σ/n)")
    p.add_argument("--plot", type=Path, help="PNG: mAP and ID accuracy against ε")
    p.add_argument("--markdown", type=Path, help="Markdown file: the table replaces the one between its privacy-table markers")
    p.add_argument("--calibration", type=Path, help="write the service's calibration file for --checkpoint here")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    encoders = [("stage-one", args.checkpoint)] + ([("baseline", args.baseline)] if args.baseline else [])
    results: dict[str, list[dict[str, Any]]] = {}
    shas = {}
    for name, path in encoders:
        embedder = load_encoder(path, args.device)
        shas[name] = embedder.sha256
        scoring = Scoring(embedder.feature_domain, embedder.split_sign, embedder.track_scorer)
        results[name] = curve_for(
            split_features(embedder, args.data),
            args.epsilons,
            args.delta,
            args.draws,
            attack=not args.no_attacker,
            tracks=not args.no_tracks,
            pooled=args.pooled_tracks,
            scoring=scoring,
        )
    payload = {
        "data": str(args.data),
        "delta": args.delta,
        "draws": args.draws,
        "checkpoints": {n: str(p) for n, p in encoders},
        "sha256": shas,
        "groupings": GROUPINGS,
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2))
    if args.markdown:
        write_markdown(args.markdown, markdown_table(results))
    if args.plot:
        plot(results, args.plot)
    if args.calibration:
        payload = calibration(shas["stage-one"], args.data.name, args.delta, args.draws, results["stage-one"])
        args.calibration.write_text(json.dumps(payload, indent=2))
    print(markdown_table(results))


if __name__ == "__main__":
    main()
