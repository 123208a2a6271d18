"""Checkpoints are directories written to a temporary name and renamed: a crash mid-save
never leaves a broken 'latest'. Training state = Accelerate's save_state + trainer_state.json."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tlscale.errors import RunStateError
from tlscale.files import publish_dir, write_json_atomic, write_jsonl_atomic  # noqa: F401  (re-exported)

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    best_metric: float | None = None
    best_step: int | None = None
    epoch_times_s: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    samples_seen: int = 0
    running_loss: float = 0.0  # loss summed over all ranks since the last logged row
    running_count: int = 0
    world_size: int = 1
    backend: str = "none"


def checkpoint_root(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def save_training_state(accelerator, output_dir: Path, state: TrainState, keep: int) -> Path:
    """Every rank writes its part (DeepSpeed partitions, RNG states) into a temporary folder;
    the main process publishes it only once all ranks are done."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{state.step:07d}"
    tmp = root / f".tmp-step-{state.step:07d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE_FILE, asdict(state))
        publish_dir(tmp, final)
        write_json_atomic(root / "latest.json", {"checkpoint": final.name, "step": state.step})
        _prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old)


def latest_checkpoint(output_dir: Path) -> Path | None:
    pointer = checkpoint_root(output_dir) / "latest.json"
    if not pointer.is_file():
        return None
    path = checkpoint_root(output_dir) / json.loads(pointer.read_text())["checkpoint"]
    if not (path / STATE_FILE).is_file():
        raise RunStateError(f"{path}: the latest checkpoint is incomplete (no {STATE_FILE})")
    return path


def check_resumable(checkpoint: Path, backend: str, world: int) -> None:
    """DDP and single-process checkpoints hold full states and resume on any number of processes;
    DeepSpeed's hold per-rank partitions and resume only where they were written."""
    saved = json.loads((checkpoint / STATE_FILE).read_text())
    saved_world, saved_backend = saved.get("world_size", 1), saved.get("backend", "none")
    if "deepspeed" in (saved_backend, backend) and (saved_backend, saved_world) != (backend, world):
        raise RunStateError(
            f"{checkpoint}: saved by backend '{saved_backend}' on {saved_world} process(es); this run is "
            f"'{backend}' on {world}. DeepSpeed checkpoints hold per-rank partitions of the optimizer "
            "state and resume only with the same backend and num_processes. Resume with those settings, "
            "or start a new run from the saved model folder"
        )


def load_training_state(accelerator, checkpoint: Path) -> TrainState:
    accelerator.load_state(str(checkpoint))
    return TrainState(**json.loads((checkpoint / STATE_FILE).read_text()))
