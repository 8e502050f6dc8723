"""Training-free levers on the shipped ensemble, measured offline on the shared split (stop 20).

Each lever changes what the two members of the default ensemble (OSNet x0.25 256×128, MobileNetV2 192×96) see or how
their features are combined, without training a backbone:

- the in-graph resize of the 256×128 input to MobileNetV2's 192×96: plain bilinear (shipped) or antialiased (what the
  decoder does);
- a flip average (the crop's and its mirror image's projected features; twice the encoder cost);
- the head: LDA dimension and regularisation, and a head fine-tuned with the Gaussian mechanism at ε = 32's σ in the
  loop (noisy track means of the training split's other camera against clean queries, softmax over 256 identities);
- query expansion over noisy tracks (each query's score plus the mean of its top-k tracks' scores to each track).

``features`` caches each member's unit features (every variant) for the training, query and gallery crops; ``report``
prints rank-1/mAP and track mAP at ε = 32 (δ = 1e-5, split signs, the noise-aware scorer refitted per head, 3 noise
draws) for each variant from the cache.

    python benchmarks/ensemble_levers.py features --cache /tmp/levers    # ~16 min on the 2-core CPU
    python benchmarks/ensemble_levers.py report --cache /tmp/levers      # ~5 min
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATA = Path("../shared/datasets/cuhk03-detected")
CHECKPOINTS = Path(__file__).resolve().parents[1] / "models" / "checkpoints"
VARIANTS = ("osn", "osn_f", "mnv_bil", "mnv_bil_f", "mnv_aa", "mnv_aa_f")


def features(cache: Path, data: Path) -> None:
    from models.checkpoint import load_encoder
    from models.data import read_market_split
    from models.data.transforms import eval_transform, load_images

    cache.mkdir(parents=True, exist_ok=True)
    split = read_market_split(data)
    osnet = load_encoder(CHECKPOINTS / "stage1_osnet_x0_25_256x128.pt").model
    mobilenet = load_encoder(CHECKPOINTS / "stage1_mobilenetv2_192x96.pt").model
    for name, samples in (("train", split.train), ("query", split.query), ("gallery", split.gallery)):
        np.save(cache / f"pid_{name}.npy", np.array([s.pid for s in samples]))
        np.save(cache / f"cam_{name}.npy", np.array([s.camid for s in samples]))
        out: dict[str, list[np.ndarray]] = {k: [] for k in VARIANTS}
        started, paths = time.time(), [s.path for s in samples]
        for first in range(0, len(paths), 256):
            x = eval_transform(load_images(paths[first : first + 256], (256, 128)), (256, 128))
            with torch.inference_mode():
                for b in range(0, x.shape[0], 16):
                    for flip in ("", "_f"):
                        view = x[b : b + 16].flip(3) if flip else x[b : b + 16]
                        out["osn" + flip].append(F.normalize(osnet(view), dim=1).numpy())
                        for tag, antialias in (("bil", False), ("aa", True)):
                            small = F.interpolate(view, size=(192, 96), mode="bilinear", antialias=antialias, align_corners=False)
                            out[f"mnv_{tag}{flip}"].append(F.normalize(mobilenet(small), dim=1).numpy())
            print(name, first, f"{time.time() - started:.0f} s", flush=True)
        for key, parts in out.items():
            np.save(cache / f"f_{name}_{key}.npy", np.concatenate(parts))


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.arrays: dict[str, np.ndarray] = {}  # every variant reads the same files: each is read once

    def load(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = np.load(self.root / f"{name}.npy")
        return self.arrays[name]

    def concat(self, split: str, resize: str = "bil", flip: bool = False) -> np.ndarray:
        suffix = "_f" if flip else ""
        return _unit(np.concatenate([self.load(f"f_{split}_osn{suffix}"), self.load(f"f_{split}_mnv_{resize}{suffix}")], 1))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def evaluate(cache: Cache, head: np.ndarray, resize: str = "bil", flip: bool = False, tracks: bool = True) -> dict[str, float]:
    """Clean rank-1/mAP of the signed head output, and track mAP at ε = 32 (3 draws) with the scorer refitted."""
    from models.evaluation import cosine_distance, evaluate_rankings
    from models.evaluation.likelihood import TrackScorer, split_signs
    from models.evaluation.tracks import evaluate_tracks
    from models.privacy.curve import release

    def signed(split: str) -> np.ndarray:
        f = _unit(cache.concat(split, resize) @ head)
        return _unit(f + _unit(cache.concat(split, resize, True) @ head)) if flip else f

    labels = (cache.load("pid_query"), cache.load("pid_gallery"), cache.load("cam_query"), cache.load("cam_gallery"))
    query, gallery = signed("query"), signed("gallery")
    clean = evaluate_rankings(cosine_distance(query, gallery), *labels)
    result = {"rank1": 100 * clean["rank1"], "mAP": 100 * clean["mAP"]}
    if tracks:
        scorer = TrackScorer.fit(split_signs(signed("train")), cache.load("pid_train"))
        draws = []
        for seed in range(3):
            noisy, sigma = release(split_signs(gallery).astype(np.float32), 32.0, 1e-5, seed, "nonnegative")
            draws.append(100 * evaluate_tracks(split_signs(query), noisy, *labels, scorer=scorer, sigma=sigma)["mAP"])
        result |= {"track_mAP_eps32": float(np.mean(draws)), "track_mAP_eps32_sd": float(np.std(draws))}
    return result


def noise_aware_head(cache: Cache, start: np.ndarray, steps: int, sigma: float = 0.2898, seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """The head fine-tuned with the mechanism in the loop; returns the head every 500 steps."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x = torch.from_numpy(cache.concat("train")).float()
    by_identity: dict[int, dict[int, list[int]]] = {}
    for i, (pid, cam) in enumerate(zip(cache.load("pid_train"), cache.load("cam_train"), strict=True)):
        by_identity.setdefault(int(pid), {}).setdefault(int(cam), []).append(i)
    identities = [views for views in by_identity.values() if len(views) >= 2]
    head = torch.nn.Parameter(torch.from_numpy(start.copy()).float())
    scale = torch.nn.Parameter(torch.tensor(10.0))
    optimiser = torch.optim.Adam([head, scale], lr=1e-3)
    dim, batch, kept = start.shape[1], 256, []
    for step in range(steps):
        queries, members, track_of = [], [], []
        for j, pick in enumerate(rng.choice(len(identities), batch, replace=False)):
            views = identities[pick]
            a, b = rng.permutation(sorted(views))[:2]
            queries.append(int(rng.choice(views[a])))
            chosen = rng.choice(views[b], min(len(views[b]), int(rng.integers(1, 6))), replace=False)
            members += chosen.tolist()
            track_of += [j] * len(chosen)
        q = F.normalize(x[queries] @ head, dim=1)
        e = F.normalize(x[members] @ head, dim=1)
        noisy = torch.cat([F.relu(e), F.relu(-e)], 1) + sigma * torch.randn(len(members), 2 * dim)
        index = torch.tensor(track_of)
        means = torch.zeros(batch, 2 * dim).index_add_(0, index, noisy) / torch.bincount(index, minlength=batch).float()[:, None]
        loss = F.cross_entropy(scale * q @ (means[:, :dim] - means[:, dim:]).T, torch.arange(batch))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 500 == 499:
            kept.append((step + 1, head.detach().double().numpy().copy()))
    return kept


def query_expansion(cache: Cache, head: np.ndarray, top: int, weight: float) -> float:
    """Track mAP at ε = 32 (2 draws) when each query's z-scored likelihood ratios gain ``weight`` times the mean z-scored
    score of its top ``top`` tracks to every other track (noisy against noisy)."""
    from models.evaluation.likelihood import TrackScorer, split_signs, track_noise_variance
    from models.evaluation.ranking import evaluate_rankings
    from models.evaluation.tracks import group_tracks
    from models.privacy.curve import release

    def emitted(split: str) -> np.ndarray:
        return split_signs(_unit(cache.concat(split) @ head))

    scorer = TrackScorer.fit(emitted("train"), cache.load("pid_train"))
    query, gallery = emitted("query"), emitted("gallery")
    index, t_pids, t_cams = group_tracks(cache.load("pid_gallery"), cache.load("cam_gallery"))
    tracks = len(t_pids)
    values = []
    for seed in range(2):
        noisy, sigma = release(gallery.astype(np.float32), 32.0, 1e-5, seed, "nonnegative")
        sums = np.zeros((tracks, gallery.shape[1]))
        np.add.at(sums, index, noisy)
        means = sums / np.bincount(index, minlength=tracks)[:, None]
        noise = track_noise_variance(np.full(len(index), sigma), index, tracks)
        scores = scorer.scores(query, means, noise)
        between = scorer.prepare(means, noise, query_noise_var=float(noise.mean())).scores(means)
        between = 0.5 * (between + between.T)
        np.fill_diagonal(between, np.nan)
        z = (scores - scores.mean(1, keepdims=True)) / scores.std(1, keepdims=True)
        zb = np.nan_to_num((between - np.nanmean(between, 1, keepdims=True)) / np.nanstd(between, 1, keepdims=True))
        expanded = z + weight * zb[np.argsort(-scores, 1)[:, :top]].mean(1) if top else z
        values.append(100 * evaluate_rankings(-expanded, cache.load("pid_query"), t_pids, cache.load("cam_query"), t_cams)["mAP"])
    return float(np.mean(values))


def report(cache: Cache) -> None:
    from models.projection import fit_lda

    train, labels = cache.concat("train"), cache.load("pid_train")

    def line(name: str, result: dict[str, float]) -> None:
        tracks = f" | {result['track_mAP_eps32']:.1f} ± {result['track_mAP_eps32_sd']:.1f}" if "track_mAP_eps32" in result else " | –"
        print(f"| {name} | {result['rank1']:.1f} / {result['mAP']:.1f}{tracks} |", flush=True)

    print("| variant | rank-1 / mAP % | track mAP ε = 32 % |\n|---|---|---|")
    lda48 = fit_lda(train, labels, 48, 0.01)
    line("shipped: bilinear resize, LDA-48", evaluate(cache, lda48))
    line("antialiased resize, LDA-48", evaluate(cache, fit_lda(cache.concat("train", "aa"), labels, 48, 0.01), resize="aa"))
    line("bilinear, LDA-48, flip average", evaluate(cache, lda48, flip=True))
    line("antialiased, LDA-48, flip average", evaluate(cache, fit_lda(cache.concat("train", "aa"), labels, 48, 0.01), resize="aa", flip=True))
    for dim in (24, 32, 64, 96):
        line(f"bilinear, LDA-{dim}", evaluate(cache, fit_lda(train, labels, dim, 0.01)))
    for reg in (0.001, 0.05, 0.2):
        line(f"bilinear, LDA-48, regularisation {reg}", evaluate(cache, fit_lda(train, labels, 48, reg), tracks=False))
    for steps, head in noise_aware_head(cache, lda48, 2000):
        line(f"LDA-48 fine-tuned with the mechanism in the loop, {steps} steps", evaluate(cache, head))
    print("\n| query expansion over noisy tracks | track mAP ε = 32 % (2 draws) |\n|---|---|")
    for top, weight in ((0, 0.0), (1, 0.3), (3, 0.3), (5, 0.3), (5, 1.0)):
        print(f"| top {top}, weight {weight} | {query_expansion(cache, lda48, top, weight):.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("features", "report"))
    parser.add_argument("--cache", type=Path, required=True, help="folder for the cached member features")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.step == "features":
        features(args.cache, args.data)
    else:
        report(Cache(args.cache))


if __name__ == "__main__":
    main()
