"""`proui-train demo`: a Gradio page over `restore.FaceRestorer` (the optional extra `proui[demo]`).

A photo in; out: the photo as the model saw it, the restored photo and the faces' strips (one row per restored face:
16x16 input | output | the photo aligned to 128x128, `infer.strip`). The released models are selectable; the embedded demo photos are
the examples, and the page opens with the first one restored (one restore per page load).

Occlusion is an experiment on the model, not on the face search: the faces are searched on the photo as uploaded
(a store's landmarks, too, are those of the clean face), then the occluder goes into the photo and the restorer
aligns, hallucinates and pastes back those faces. Two occluders, which combine:

- **painted**: strokes drawn on the photo in the editor; the model's input is the editor's composite.
- **synthetic**: on each face, the build's `proui_data.occlusion.occlude` (the folder recipe's `[occlusion]`
  table, or one kind of it) draws on the face aligned to the model's 128x128 template, as a store's occlusions
  are drawn; the occluded face goes back into the photo through the inverse alignment, blended by the
  occlusion's alpha (`restore.paste_face`), so the 16x16 input warped from the photo holds the occluder where a
  store's `lr_occluded` would.

Gradio is imported only when the page is built: the rest of proui never needs it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from proui_data import align
from proui_data.decode import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from proui_data.occlusion import KINDS, KindWeights, OcclusionConfig, occlude

from .infer import strip
from .restore import FaceRecord, FaceRestorer, check_rgb, paste_face

REPO = Path(__file__).resolve().parents[1]
RELEASED = (REPO / "weights" / "proui-celeba-gpu", REPO / "weights" / "proui-celeba-gan-gpu",
            REPO / "weights" / "proui-celeba-fsrnet-cpu")
EXAMPLES = tuple(sorted((REPO / "proui_data" / "demo").glob("*.jpg")))
OCCLUDERS = ("none", "random") + KINDS  # random: the recipe's kind weights; a kind: that kind only
MAX_UPLOAD = "25mb"  # Gradio refuses larger files before decoding them
MAX_OUTPUT_SIDE = 4096  # a larger upscale is lowered: the restored photo is a float32 canvas of this size at most
INSTALL_HINT = "pip install 'proui[demo]'"


class DemoError(ValueError):
    """The demo cannot start: the message says why and what to do."""


def require_gradio() -> Any:
    """The gradio module, or a DemoError naming the extra that installs it."""
    try:
        import gradio
    except ImportError as e:
        raise DemoError(f"the demo page needs gradio ({e}); install it with {INSTALL_HINT}") from None
    return gradio


@dataclass
class Restored:
    """One request's result: the photo the model saw, the restored photo (None when nothing was restored), one
    record per face, and what the page says."""

    model_input: np.ndarray | None
    restored: np.ndarray | None
    faces: list[FaceRecord]
    message: str


def occlude_faces(photo: np.ndarray, restorer: FaceRestorer, faces: list, kind: str = "random",
                  seed: int = 0) -> np.ndarray:
    """`photo` with a synthetic occlusion drawn on each of `faces` (`restorer.search`'s result) in the model's
    template frame and blended back into the photo (see the module docstring). `kind`: "random" (the recipe's
    kind weights) or one of `KINDS`; the draws come from `seed`."""
    cfg = restorer.recipe.occlusion or OcclusionConfig()
    if kind != "random":
        cfg = dataclasses.replace(cfg, kinds=KindWeights(**{kind: 1.0}))
    rng = np.random.default_rng(seed)
    canvas = photo.astype(np.float32)
    for found in faces:
        try:
            m = restorer.to_template(found.landmarks)
        except ValueError:
            continue  # degenerate landmarks: the restorer skips this face too
        occ = occlude(align.warp_to_template(photo, m), align.apply_transform(m, found.landmarks), cfg, rng)
        paste_face(canvas, occ.hr_occluded, occ.mask.astype(np.float32) / 255.0, cv2.invertAffineTransform(m))
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def fit_photo(photo: np.ndarray, painted: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(photo, painted, note): a photo over the build's decode.max_side reduced to it (area average), as the
    build decodes one; a ValueError for one over its decompression-bomb bound."""
    h, w = photo.shape[:2]
    if h * w > DEFAULT_MAX_PIXELS:
        raise ValueError(f"the photo is {w}x{h}, more than the {DEFAULT_MAX_PIXELS / 1e6:.0f} Mpx a build decodes: "
                         f"send one at most {DEFAULT_MAX_SIDE} px a side")
    scale = DEFAULT_MAX_SIDE / max(h, w)
    if scale >= 1:
        return photo, painted, ""
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    shrink = [cv2.resize(a, size, interpolation=cv2.INTER_AREA) if a is not None else None for a in (photo, painted)]
    return shrink[0], shrink[1], f"The {w}x{h} photo was reduced to {size[0]}x{size[1]} ({DEFAULT_MAX_SIDE} px a side)."


def restore_request(photo: np.ndarray, restorer: FaceRestorer, painted: np.ndarray | None = None,
                    occluder: str = "none", seed: int = 0) -> Restored:
    """One request of the page: search `photo`, occlude it (`painted`: the photo with strokes drawn on it, of its
    size; `occluder`: one of OCCLUDERS), restore the occluded photo's faces. Bad input ends in a message."""
    photo = check_rgb(photo)
    if painted is not None and check_rgb(painted).shape != photo.shape:
        photo, painted = painted, None  # the editor changed the size: the drawing is the photo
    try:
        photo, painted, note = fit_photo(photo, painted)
    except ValueError as e:
        return Restored(None, None, [], f"Refused: {e}.")
    cap = max(1, MAX_OUTPUT_SIDE // max(photo.shape[:2]))
    if restorer.upscale > cap:
        note = f"{note} Upscale x{restorer.upscale} lowered to x{cap} ({MAX_OUTPUT_SIDE} px a side at most).".strip()
        restorer = restorer.with_options(upscale=cap)
    faces = restorer.search(photo)
    model_input = painted if painted is not None else photo
    if not faces:
        return Restored(model_input, None, [], " ".join(filter(None, [note, (
            f"No face found (faces down to eyes {restorer.recipe.detect.min_eye_distance:g} px apart are searched): "
            "try a photo with a frontal face.")])))
    if occluder != "none":
        model_input = occlude_faces(model_input, restorer, faces, occluder, seed)
    restored, records = restorer.restore(model_input, faces)
    lines = [f"- face {r.face}: eyes {r.eye_distance:.1f} px apart, {r.mode}, {r.status.replace('_', ' ')}"
             + (f" ({r.reason})" if r.reason else "") for r in records]
    n = sum(r.status == "restored" for r in records)
    return Restored(model_input, restored if n else None, records,
                    "\n".join([f"{n} of {len(records)} face(s) restored. {note}".strip()] + lines))


def face_strips(faces: list[FaceRecord]) -> np.ndarray | None:
    """The restored faces' strips (`infer.strip`) one under another, in the records' order; None without one."""
    strips = [strip(f) for f in faces if f.sr is not None]
    return np.concatenate(strips, axis=0) if strips else None


def load_models(checkpoints: list[str | Path], device: str = "auto") -> dict[str, FaceRestorer]:
    """name (the folder's or file's name) -> its restorer (the generator loaded once, in its recorded frame)."""
    models: dict[str, FaceRestorer] = {}
    for path in checkpoints:
        name = Path(path).name if Path(path).name not in models else str(path)
        models[name] = FaceRestorer(path, device=device)
    return models


def editor_photos(value: dict | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(photo, painted) of an ImageEditor value: the background, and the composite when strokes changed it."""
    if not value:
        return None, None
    background, composite = value.get("background"), value.get("composite")
    if background is None:
        return composite, None
    if composite is None or np.array_equal(composite, background):
        return background, None
    return background, composite


def build_app(checkpoints: list[str | Path], device: str = "auto") -> Any:
    """The page (a `gradio.Blocks`) over the generators at `checkpoints`; its restore endpoint is `/restore`."""
    gr = require_gradio()
    models = load_models(checkpoints, device)

    def predict(editor, model_name, occluder, seed, downscale, upscale):
        photo, painted = editor_photos(editor)
        if photo is None:
            return None, None, None, "Upload a photo or pick an example first."
        restorer = models[model_name].with_options(downscale=bool(downscale), upscale=int(upscale))
        r = restore_request(photo, restorer, painted, occluder, int(seed))
        return r.model_input, r.restored, face_strips(r.faces), r.message

    first = str(EXAMPLES[0]) if EXAMPLES else None
    with gr.Blocks(title="proui: Pro-UIGAN face restoration", analytics_enabled=False) as app:
        gr.Markdown("# Pro-UIGAN: faces hallucinated from occluded 16x16 thumbnails\n"
                    "Every face of the photo is aligned to the model's frame, shrunk to 16x16, restored to 128x128 "
                    "and pasted back. Paint on the photo, or pick a synthetic occluder, to occlude the faces first "
                    "(they are found on the photo as uploaded).")
        with gr.Row():
            with gr.Column():
                editor = gr.ImageEditor(value=first, label="photo (paint with the brush to occlude)", type="numpy",
                                        image_mode="RGB", transforms=(), sources=("upload", "clipboard"),
                                        brush=gr.Brush(colors=["#000000", "#ffffff", "#808080"], default_size=12))
                model = gr.Dropdown(list(models), value=next(iter(models)), label="model")
                occluder = gr.Dropdown(list(OCCLUDERS), value="none", label="synthetic occluder",
                                       info="drawn by the build's occlusion code on each aligned face")
                seed = gr.Number(0, precision=0, label="occluder seed")
                downscale = gr.Checkbox(True, label="restore faces larger than a thumbnail too (at 16x16)")
                upscale = gr.Slider(1, 4, value=1, step=1, label="upscale the photo (bicubic background)")
                button = gr.Button("Restore", variant="primary")
            with gr.Column():
                message = gr.Markdown(label="faces")
                with gr.Row():
                    model_input = gr.Image(label="model input (the photo as occluded)", format="png",
                                           interactive=False, height=360)
                    restored = gr.Image(label="restored photo", format="png", interactive=False, height=360)
                strips = gr.Image(label="faces, one row each: 16x16 input | output | photo aligned to 128x128",
                                  format="png", interactive=False)
        inputs = [editor, model, occluder, seed, downscale, upscale]
        outputs = [model_input, restored, strips, message]
        gr.Examples([[str(p)] for p in EXAMPLES], inputs=[editor])
        button.click(predict, inputs, outputs, api_name="restore")
        if first:
            app.load(predict, inputs, outputs, api_name=False)
    return app


def launch(checkpoints: list[str | Path], host: str = "127.0.0.1", port: int | None = None, device: str = "auto",
           block: bool = True) -> Any:
    """Build the page and serve it on host:port (None: Gradio's first free port from 7860)."""
    if not checkpoints:
        raise DemoError(f"no model to serve: give --checkpoint (a release folder or a run; the released ones are in "
                        f"{REPO / 'weights'} of a source checkout)")
    for path in checkpoints:
        if not Path(path).exists():
            raise DemoError(f"{path}: no such checkpoint (give --checkpoint a release folder or a run)")
    app = build_app(checkpoints, device)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD,
               prevent_thread_lock=not block, quiet=not block)
    return app
