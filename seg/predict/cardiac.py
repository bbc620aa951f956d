"""Cardiac inputs: ACDC file naming and phases (Info.cfg), and EDV / ESV / ejection fraction."""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from seg.data.datasets import acdc as acdc_reader
from seg.predict.outputs import num

log = logging.getLogger("seg.predict")

_ACDC_NAME = re.compile(r"(patient\d+)_(?:frame(\d+)|4d)$")


def acdc_phases(path: Path) -> dict:
    """ACDC naming with an Info.cfg beside the file -> {"patient", "phase"} for a frame file
    (patientNNN_frameNN, phase "ED" / "ES" / ""), {"patient", "frames": {"ED": n, "ES": m}} for a 4D
    cine file (patientNNN_4d); {} otherwise."""
    found = _ACDC_NAME.search(_stem(path))
    info = path.parent / "Info.cfg"
    if not found or not info.is_file():
        return {}
    try:
        frames = {ph: int(float(v)) for ph, v in acdc_reader.read_info(info).items() if ph in acdc_reader.PHASES}
    except ValueError as err:
        log.warning("%s", err)
        return {}
    if found.group(2) is None:
        return {"patient": found.group(1), "frames": frames}
    frame = int(found.group(2))
    return {"patient": found.group(1), "phase": next((ph for ph, f in frames.items() if f == frame), "")}



def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return path.stem


def add_ejection_fractions(rows: list[dict]) -> list[tuple[str, str, float, float, float]]:
    """Fill edv/esv/ef of LV and RV rows for patients with both an ED and an ES volume (two frame files,
    or the ED and ES frames of one cine file); -> [(patient, structure, EDV, ESV, EF)]."""
    found = []
    volumes: dict[tuple[str, str, str], dict[str, list[dict]]] = {}
    for row in rows:
        if row["patient"] and row["phase"] in ("ED", "ES") and row["structure"] in ("lv", "rv"):
            source = row["input"] if row["frame"] != "" else "frames"     # a cine file, or separate frame files
            volumes.setdefault((row["patient"], row["structure"], source), {}) \
                .setdefault(row["phase"], []).append(row)
    for (patient, structure, _), phases in sorted(volumes.items()):
        if len(phases.get("ED", [])) != 1 or len(phases.get("ES", [])) != 1:
            continue
        edv, esv = float(phases["ED"][0]["volume_ml"]), float(phases["ES"][0]["volume_ml"])
        ef = 100.0 * (edv - esv) / edv if edv > 0 else float("nan")
        for row in phases["ED"] + phases["ES"]:
            row.update(edv_ml=num(edv), esv_ml=num(esv), ef_percent="" if math.isnan(ef) else num(ef))
        found.append((patient, structure, edv, esv, ef))
    return found
