"""How well do the identity judges tell people apart on our aligned HR faces? Verification AUC per judge.

Same-identity pairs against as many different-identity pairs, from a store split's HR faces and CelebA's
identity file: the FaceNet judge (proui_train.models.facenet) at several crop scales, which is how its
CROP_SCALE was chosen (on the train split, never on an evaluation split), and dlib's descriptor for reference.
Each judge's cosine at 1 % false accepts is where eval's VERIFY_THRESHOLD (verified_dlib, verified_facenet)
comes from.

    python benchmarks/judge.py --store STORE --split train --identities ../shared/data/celeba/Anno/identity_CelebA.txt
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--identities", required=True, help="CelebA's Anno/identity_CelebA.txt")
    ap.add_argument("--per-identity", type=int, default=4)
    ap.add_argument("--scales", default="1.2,1.35,1.5,1.7")
    ap.add_argument("--no-dlib", action="store_true")
    args = ap.parse_args()

    from proui_data.align import template_box
    from proui_train.data import open_split, open_store, store_template
    from proui_train.identity import VERIFY_THRESHOLD as DLIB_THRESHOLD, face_descriptor
    from proui_train.metrics import verification_auc
    from proui_train.models.facenet import CROP_SCALE, VERIFY_THRESHOLD as FACENET_THRESHOLD
    from proui_train.models.facenet import facenet_embeddings, load_facenet

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    identity_of = dict(line.split() for line in open(args.identities))
    group = open_split(args.store, args.split)
    box = template_box(store_template(open_store(args.store)))
    rows = np.flatnonzero(group["valid"][:])
    people = np.array([identity_of[str(k)] for k in group["key"][:][rows]])
    chosen = []
    for person in np.unique(people):
        mine = rows[people == person]
        if mine.size >= 2:
            chosen += rng.choice(mine, min(args.per_identity, mine.size), replace=False).tolist()
    chosen = np.sort(chosen)
    hr = torch.from_numpy(group["hr"].get_orthogonal_selection((chosen,))).permute(0, 3, 1, 2).float()
    who = np.array([identity_of[str(k)] for k in group["key"].get_orthogonal_selection((chosen,))])
    i, j = np.triu_indices(len(chosen), 1)
    same = who[i] == who[j]
    pick = np.flatnonzero(same)
    other = rng.choice(np.flatnonzero(~same), pick.size, replace=False)
    print(f"{len(chosen)} faces of {np.unique(who).size} people; {pick.size} same and {other.size} different pairs")

    def report(name: str, emb: np.ndarray, seconds: float, in_code: float | None = None) -> None:
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        cos = (emb[i] * emb[j]).sum(1)
        far1 = np.quantile(cos[other], 0.99)  # 1 % of different-person pairs score above it
        print(f"{name:>22}: AUC {verification_auc(cos[pick], cos[other]):.4f}  same {cos[pick].mean():.3f}  "
              f"different {cos[other].mean():.3f}  threshold at 1 % false accepts {far1:.3f} "
              f"(same-person pairs above it {np.mean(cos[pick] > far1):.3f})  {1000 * seconds / len(chosen):.0f} ms/face"
              + ("" if in_code is None else f"; eval's VERIFY_THRESHOLD {in_code:.3f}"))

    net = load_facenet()
    for scale in (float(s) for s in args.scales.split(",")):
        start = time.perf_counter()
        emb = torch.cat([facenet_embeddings(hr[k:k + 32], box, net, scale) for k in range(0, len(hr), 32)])
        report(f"facenet crop x{scale:g}", emb.numpy(), time.perf_counter() - start,
               FACENET_THRESHOLD if scale == CROP_SCALE else None)
    if not args.no_dlib:
        start = time.perf_counter()
        faces = hr.permute(0, 2, 3, 1).byte().numpy()
        report("dlib", np.stack([face_descriptor(f, box) for f in faces]), time.perf_counter() - start,
               DLIB_THRESHOLD)


if __name__ == "__main__":
    main()
