"""Pro-UIGAN face hallucination: training, evaluation and restoring faces in photos.

    from proui_train import ProUIGAN, restore
    model = ProUIGAN.from_pretrained("weights/proui-celeba-gpu")
    restored, faces = restore(photo_rgb, model)  # RGB uint8 (H, W, 3) in and out; one FaceRecord per face
"""
from .models import ProUIGAN
from .restore import FaceRecord, FaceRestorer, restore

__all__ = ["FaceRecord", "FaceRestorer", "ProUIGAN", "restore"]
