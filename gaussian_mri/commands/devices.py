"""``gaussian-mri devices``: the compute devices PyTorch can use here, for a device selector.

With ``--json`` stdout carries exactly one JSON object (nothing else)::

    {"torch": "2.5.1", "cuda": true,
     "devices": [{"value": "auto", "label": "Automatic (GPU: NVIDIA H100 (80 GB))"},
                 {"value": "cuda:0", "label": "GPU 0: NVIDIA H100 (80 GB)", "memory_gb": 79.2},
                 {"value": "cpu", "label": "CPU (16 threads)"}]}

``value`` is what ``--device`` of the ``svr`` and ``cine`` commands accepts; ``auto`` picks the
current CUDA device when there is one, else the CPU. Without PyTorch, ``torch`` is ``null`` and only
``auto`` and ``cpu`` are listed (exit code 0 either way), so that a GUI can ask before installing it.
"""

from __future__ import annotations

import argparse

NAME = "devices"
HELP = "List the compute devices PyTorch can use (--json: one JSON object for the Slicer modules)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _gpu_label(name: str, memory_gb: float) -> str:
    return f"{name} ({memory_gb:.0f} GB)"


def detect_devices() -> dict:
    """``{"torch", "cuda", "devices": [{"value", "label"[, "memory_gb"]}]}``; see the module docstring."""
    import contextlib
    import os
    import sys

    try:
        # keep stdout clean for --json, whatever an import might print
        with contextlib.redirect_stdout(sys.stderr):
            import torch
    except ImportError:
        return {
            "torch": None,
            "cuda": False,
            "devices": [
                {"value": "auto", "label": "Automatic (PyTorch not installed yet)"},
                {"value": "cpu", "label": f"CPU ({os.cpu_count() or 1} threads)"},
            ],
        }

    gpus: list[dict] = []
    auto = "Automatic (CPU: no CUDA GPU found)"
    with contextlib.redirect_stdout(sys.stderr):
        if torch.cuda.is_available():
            labels = {}
            for i in range(torch.cuda.device_count()):
                prop = torch.cuda.get_device_properties(i)
                memory_gb = prop.total_memory / 2**30
                labels[i] = _gpu_label(prop.name, memory_gb)
                gpus.append({"value": f"cuda:{i}", "label": f"GPU {i}: {labels[i]}", "memory_gb": round(memory_gb, 1)})
            if labels:
                current = torch.cuda.current_device()
                auto = f"Automatic (GPU: {labels.get(current, labels[min(labels)])})"
        threads = torch.get_num_threads()
    return {
        "torch": str(torch.__version__),
        "cuda": bool(gpus),
        "devices": [{"value": "auto", "label": auto}, *gpus, {"value": "cpu", "label": f"CPU ({threads} threads)"}],
    }


def run(args: argparse.Namespace) -> int:
    import json

    info = detect_devices()
    if args.json:
        print(json.dumps(info), flush=True)
        return 0
    print(f"PyTorch {info['torch']}" if info["torch"] else "PyTorch is not installed")
    print(f"CUDA available: {'yes' if info['cuda'] else 'no'}")
    width = max(len(d["value"]) for d in info["devices"])
    for d in info["devices"]:
        print(f"  {d['value']:<{width}}  {d['label']}")
    return 0
