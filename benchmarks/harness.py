"""What the step benchmarks share: one row per fresh subprocess, its memory and the machine's load."""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (or, with field="VmHWM", its peak) in MiB."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def reset_peak_rss() -> bool:
    try:  # Linux >= 4.0: "5" resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by the whole machine (/proc/stat) and by this process."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    own = os.times()
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def run_row(row: dict, cmd: list[str]) -> dict:
    """Run one benchmark row in a fresh interpreter; its last stdout line is a JSON result."""
    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return {**row, "status": f"failed (exit {proc.returncode})"}
    return {**row, "status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def write_report(out: Path, title: str, header: str, body: str, data: dict) -> None:
    """The markdown report (title, how it was made, the table) at ``out``, its data as JSON beside it; prints it."""
    report = "\n".join([f"# {title}", "", header, "", body, ""])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    print(report)
