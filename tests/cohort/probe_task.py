"""A cheap cohort task for the Dask-side tests: it copies each case's first input, reports
the memory budget it was loaded with, and logs every load and every finished case to files,
so a test can count them across worker processes (appends of one short line are atomic
with O_APPEND)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from napari_medattn.cohort import CaseOutput, CohortTask
from napari_medattn.errors import InsufficientMemoryError, ReadError
from napari_medattn.io.atomic import write_bytes_atomically


class ProbeTask(CohortTask):
    name = "probe"

    def __init__(self, log: Path, value: int = 1, delay_s: float = 0.0,
                 kill_case: str | None = None, too_big_case: str | None = None) -> None:
        self.log, self.value, self.delay_s, self.kill_case = Path(log), value, delay_s, kill_case
        self.too_big_case = too_big_case

    def parameters(self) -> dict:
        # The log folder too: the workers keep one task per parameter set (the plugin is
        # idempotent), and each test logs into its own folder.
        return {"task": self.name, "value": self.value, "log": str(self.log),
                "delay_s": self.delay_s, "kill_case": self.kill_case,
                "too_big_case": self.too_big_case}

    def load(self, memory=None) -> dict:
        _append(self.log / "loads.txt", f"{os.getpid()}")
        return {"pid": os.getpid(), "memory": None if memory is None else memory.free_ram}

    def run_case(self, state: dict, case, case_dir: Path) -> CaseOutput:
        import torch

        if case.case_id == self.kill_case:
            os._exit(3)  # the worker dies on this case every time
        if case.case_id == self.too_big_case and not (self.log / "grown").exists():
            raise InsufficientMemoryError(f"Case {case.case_id} does not fit in memory.")
        time.sleep(self.delay_s)
        source = case.inputs[0]
        if not source.is_file():
            raise ReadError(f"{source} does not exist.")
        data = source.read_bytes()
        write_bytes_atomically(case_dir / "copy.bin", data * self.value)
        _append(self.log / "done.txt", case.case_id)
        return CaseOutput({"bytes": len(data) * self.value,
                           "torch_threads": torch.get_num_threads(),
                           "load_pid": state["pid"], "omp": os.environ.get("OMP_NUM_THREADS"),
                           "memory_budget": state["memory"]},
                          {"copy": "copy.bin"})


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []
