"""Where and from what code a result came: git state, machine, versions."""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"sha": ..., "dirty": ...}`` of the checkout holding the code (None outside git)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):  # no git, no repository, or no commit yet
        sha = None
    try:
        # results/ holds outputs (an artifact being drawn changes it), not code
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ":!results"))
    except (OSError, subprocess.CalledProcessError):
        dirty = None
    return {"sha": sha, "dirty": dirty}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Host, CPU, GPUs and library versions."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def provenance(command: list[str] | str | None = None) -> dict[str, Any]:
    """Everything needed to say which code, on which machine, made a result, and when."""
    return {
        "command": command if command is not None else sys.argv,
        "git": git_state(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cwd": os.getcwd(),
        **machine(),
    }
