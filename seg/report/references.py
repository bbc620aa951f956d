"""Published reference numbers (the authors' numbers on the real data; never computed here)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    method: str
    dice: dict          # structure -> Dice in %, plus "mean"
    source: str
    note: str = ""
    hd95: str = ""      # which HD95 definition the paper reports, where it reports one


ACDC_REFERENCES = (
    Reference("TransUNet (R50-ViT-B/16)", {"rv": 88.86, "myo": 84.54, "lv": 95.73, "mean": 89.71},
              "Chen et al., TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation, "
              "arXiv:2102.04306 (2021), ACDC table",
              hd95="medpy's hd95 (pooled 95th percentile, without voxel spacing): our hd95_pooled"),
    Reference("Swin-Unet", {"rv": 88.55, "myo": 85.62, "lv": 95.83, "mean": 90.00},
              "Cao et al., Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation, "
              "arXiv:2105.05537 (ECCV Workshops 2022), ACDC table",
              hd95="medpy's hd95 (pooled 95th percentile, without voxel spacing): our hd95_pooled"),
)
ACDC_NOT_INCLUDED = ("nnU-Net (Isensee et al., Nature Methods 18:203-211, 2021) is not listed: its ACDC "
                     "results are reported per phase and structure in the paper's supplement, and we list only "
                     "numbers we could check.")
COVID_REFERENCES = (
    Reference("best network of Tahir et al. (infection)", {"infection": 88.21, "mean": 88.21},
              "Tahir et al., COVID-19 infection localization and severity grading from chest X-ray images, "
              "Computers in Biology and Medicine 139:105002 (2021), arXiv:2103.07985, abstract",
              note="IoU 83.05 %. Their split, resolution and handling of images without infection differ from ours."),
)
STRUCTURE_ALIASES = {"rv": ("rv", "right_ventricle"), "myo": ("myo", "myocardium"),
                     "lv": ("lv", "left_ventricle"), "infection": ("infection", "covid", "lesion")}


def references_for(task: str, dataset: str) -> tuple[tuple[Reference, ...], str, str]:
    """(references, name of the real data set, what is not included) for a task, by dataset name."""
    key = f"{task} {dataset}".lower()
    if "cardiac" in key or "acdc" in key:
        return ACDC_REFERENCES, "ACDC (real cine MRI; 20 test volumes of the TransUNet split)", ACDC_NOT_INCLUDED
    if "xray" in key or "covid" in key:
        return COVID_REFERENCES, "COVID-QU-Ex infection segmentation data (real chest X-rays)", ""
    return (), "", ""
