"""The raw result files: `results/<benchmark>_<setting>_<device>.json`, written by every benchmark."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any

import torch

from tasks.bench.registry import SETTINGS
from tasks.paths import RESULTS


def device_label() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "-")
    return f"cpu-{torch.get_num_threads()}threads"


def software() -> dict[str, str]:
    import timm
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
    }


def save_result(kind: str, setting_name: str, payload: dict[str, Any], command: str, results: Path = RESULTS) -> Path:
    """Write one result with its provenance (device, date, command, software, the setting's description)."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{kind}_{setting_name}_{device_label()}.json"
    meta = {
        "benchmark": kind,
        "setting": setting_name,
        "device": device_label(),
        "date": dt.date.today().isoformat(),
        "command": command,
        "software": software(),
        "note": SETTINGS[setting_name].note if setting_name in SETTINGS else "",
    }
    path.write_text(json.dumps({**meta, **payload}, indent=1, default=str))
    print(f"[bench] wrote {path}")
    return path


def load_results(results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every result in `results`, by file stem, in file-name order."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(results.glob("*.json"))}
