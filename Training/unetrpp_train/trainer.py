"""The training loop: the official UNETR++ recipe on one process, or on many with DDP (`torchrun`).

Run folder (-o RUNDIR): `run.json` (recipe, its hash, network, dataset, plan, code version),
`checkpoint_latest.pt` (written atomically every `checkpoint_every` epochs and, optionally, every
`checkpoint_every_iterations` steps; the one it replaces is kept as `checkpoint_previous.pt`),
`checkpoint_final.pt` at the end, `metrics.jsonl` (one line per epoch), `tensorboard/` when enabled.
Only rank 0 writes. A resume whose latest checkpoint is unreadable (cut short by a full disk, a copy that
stopped half-way) falls back to the previous one and says so.

Exact resume: the data stream is a pure function of (seed, step, rank), the checkpoint holds the
model, optimizer (momentum buffers), scheduler, AMP scaler and each rank's python/numpy/torch(/cuda)
RNG states (dropout), so a run killed at any point and resumed from its last checkpoint ends with
the weights of the uninterrupted run (bit-identical on CPU with the same thread count).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import random
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

import unetrpp
from unetrpp.atomic import staged_file, write_text
from unetrpp.errors import CancelledError, UnetrppError
from unetrpp.network import NetworkConfig, build_network, variant_config

from .config import ConfigError, TrainConfig, resolve_for_plan
from .official import check_official_split, has_official_split
from .data import (
    DataError,
    DatasetInfo,
    PatchDataset,
    StepBatchSampler,
    cache_dataset,
    default_cache_dir,
    read_dataset,
    read_plan,
)
from .losses import segmentation_loss

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "unetrpp-train-checkpoint-v1"
LATEST = "checkpoint_latest.pt"
PREVIOUS = "checkpoint_previous.pt"
FINAL = "checkpoint_final.pt"
RUN_FILE = "run.json"


class TrainingError(UnetrppError):
    """Training cannot start or continue (run folder in use, config changed on resume ...)."""


# Helpers ------------------------------------------------------------------------------------
def code_version() -> str:
    version = f"unetrpp {unetrpp.__version__}"
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        if rev:
            version += f" (git {rev})"
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def network_config(cfg: TrainConfig, info: DatasetInfo, plan: dict[str, Any]) -> NetworkConfig:
    base = variant_config(cfg.variant).to_dict()
    for k in ("dims", "hidden_size"):
        base.pop(k, None)
    base.update(in_channels=len(info.channels), out_channels=len(info.labels) + 1)
    if "patch_size" in plan and "patch_size" not in cfg.network:
        base["patch_size"] = list(plan["patch_size"])
    base.update(cfg.network)
    try:
        return NetworkConfig.from_dict(base)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], [int(v) for v in np_state[1]], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: Path, keep_previous: Path | None = None) -> None:
    """Write `path` so that it is either the old file or the complete new one, never a part
    (`unetrpp.atomic`, durable: the new file is flushed to disk before it is renamed over the old one).
    With `keep_previous`, the file being replaced is first renamed to that name (the last good
    checkpoint stays available for a resume)."""
    with staged_file(path, overwrite=True, durable=True) as tmp:
        torch.save(obj, tmp)
        if keep_previous is not None and path.is_file():
            os.replace(path, keep_previous)


def encoder_conv_trunc_normal(network: torch.nn.Module) -> None:
    """The `conv_init="trunc_normal"` option: the encoder's Conv3d weights trunc_normal(0.02), biases 0 (the
    official code leaves them at PyTorch's default, see TrainConfig.conv_init)."""
    for module in network.unetr_pp_encoder.modules():
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def make_optimizer(cfg: TrainConfig, parameters: Any) -> torch.optim.Optimizer:
    """The recipe's optimiser: SGD (the paper's: momentum, Nesterov, weight decay) or AdamW."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, loss_fn: torch.nn.Module,
               image: torch.Tensor, label: torch.Tensor, *, grad_clip: float, use_amp: bool,
               parameters: Any = None) -> torch.Tensor:
    """One optimisation step of the recipe, as the trainer runs it and benchmarks/gpu.py times it: forward
    (float16 autocast with `use_amp`), Dice + CE with deep supervision in float32, backward through the
    GradScaler, gradient clipping to `grad_clip` (global norm), optimiser step. `parameters`: what is
    clipped (the unwrapped network's, under DDP); default `model.parameters()`. Returns the loss (detached)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=image.device.type, dtype=torch.float16, enabled=use_amp):
        outputs = model(image)
    loss = loss_fn([o.float() for o in outputs], label)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(parameters if parameters is not None else model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


class CheckpointError(TrainingError):
    """A checkpoint file that cannot be used (truncated, corrupt, not ours)."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file, read without unpickling arbitrary objects (weights_only); a missing, truncated or
    corrupt file is a CheckpointError naming it (not a torch traceback)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors ...
        raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}: {str(exc)[:200]}), e.g. cut short") from exc


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A complete unetrpp-train checkpoint, or CheckpointError saying what is wrong with the file."""
    ckpt = load_checkpoint(path)
    needed = ("model", "optimizer", "scheduler", "scaler", "next_step", "rng", "config_hash", "config")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or any(k not in ckpt for k in needed):
        raise CheckpointError(f"{path} is not a complete unetrpp-train checkpoint")
    return ckpt


def resume_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest usable checkpoint of a run: latest, else (with a warning naming the problem) the previous."""
    latest, previous = run_dir / LATEST, run_dir / PREVIOUS
    if not latest.is_file() and not previous.is_file():
        raise TrainingError(f"cannot resume: {latest} does not exist")
    try:
        return latest, read_checkpoint(latest)
    except CheckpointError as exc:
        if not previous.is_file():
            raise TrainingError(f"cannot resume {run_dir}: {exc}, and there is no earlier checkpoint ({PREVIOUS})") from exc
        try:
            ckpt = read_checkpoint(previous)
        except CheckpointError as exc2:
            raise TrainingError(f"cannot resume {run_dir}: {exc}; the earlier one too: {exc2}") from exc2
        log.warning("%s; resuming from the previous checkpoint %s (step %d) instead", exc, previous, int(ckpt["next_step"]))
        return previous, ckpt


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise TrainingError("--device cuda was requested but CUDA is not available")
    if want_cuda:
        index = local if world > 1 or ":" not in device else int(torch.device(device).index or 0)
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    elif device in ("auto", "cpu"):
        dev = torch.device("cpu")
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(minutes=30))
        log.info("rank %d/%d joined the %s process group on %s", rank, world, backend, dev)
    return Dist(rank, world, local), dev


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    epochs: int
    final_loss: float
    iterations_per_s: float
    data_wait_share: float
    peak_memory_mb: float
    state_sha256: str
    history: list[dict[str, Any]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    wait_seconds: list[float] = field(default_factory=list)


# The trainer --------------------------------------------------------------------------------
def train(
    cfg: TrainConfig,
    data_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    device: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    init_from: str | os.PathLike[str] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    on_step: Callable[[int, int, float, float | None], None] | None = None,
    cancel: Any = None,
) -> TrainResult:
    """Train (or, with `resume`, continue) a run. `init_from`: a checkpoint whose model weights
    start a new run (fine-tuning); optimizer, schedule and step start fresh. `init_state`: the same
    with a state dict for the network (`unetrpp-train finetune`). `on_step(done, total, loss, eta_s)`
    is called after every step (rank 0); `cancel` (anything with `is_set()`, e.g. a threading.Event
    set by a SIGTERM handler) stops the run after the current step: a checkpoint is written, then
    CancelledError is raised (resume with `--resume`)."""
    run_dir = Path(run_dir)
    ddp, dev = setup_distributed(device)
    try:
        return _train(cfg, Path(data_dir), run_dir, resume, ddp, dev, cache_dir, init_from, init_state, on_step,
                      cancel)
    finally:
        if ddp.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, data_dir: Path, run_dir: Path, resume: bool, ddp: Dist, dev: torch.device,
           cache_dir: str | os.PathLike[str] | None, init_from: str | os.PathLike[str] | None = None,
           init_state: dict[str, torch.Tensor] | None = None,
           on_step: Callable[[int, int, float, float | None], None] | None = None, cancel: Any = None) -> TrainResult:
    info = read_dataset(data_dir)
    if has_official_split(cfg.dataset) and not cfg.custom_split:
        check_official_split(cfg.dataset, info.splits, f"{data_dir / 'dataset.json'}", all_cases=list(info.cases))
    plan = read_plan(data_dir)
    cfg = resolve_for_plan(cfg, plan)
    net_cfg = network_config(cfg, info, plan)
    train_ids = info.split(cfg.split)
    val_ids = info.split(cfg.val_split) if cfg.val_iterations > 0 and cfg.val_split in info.splits else []
    if cfg.val_iterations > 0 and not val_ids:
        log.warning("no %r split in %s: patch validation uses the training cases", cfg.val_split, data_dir)
        val_ids = train_ids
    chash = cfg.config_hash()
    ckpt_path = run_dir / LATEST

    checkpoint = None
    partial: dict[str, Any] = {}
    if resume:
        _, checkpoint = resume_checkpoint(run_dir)
        if checkpoint["config_hash"] != chash:
            old = checkpoint["config"]
            new = cfg.to_dict()
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise TrainingError(
                f"cannot resume {run_dir}: the recipe changed since the checkpoint (config hash "
                f"{checkpoint['config_hash']} -> {chash}; changed: {', '.join(diff)}). Resume with the "
                "same settings or start a new run folder."
            )
    elif ckpt_path.is_file() or (run_dir / FINAL).is_file() or (run_dir / PREVIOUS).is_file():
        raise TrainingError(f"{run_dir} already holds a training run; pass --resume to continue it or choose another -o")

    if ddp.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        run_info = {
            "config": cfg.to_dict(),
            "config_hash": chash,
            "network": net_cfg.to_dict(),
            "dataset": {
                "name": info.name, "root": str(info.root.resolve()), "channels": info.channels,
                "labels": {str(k): v for k, v in info.labels.items()},
                "train_cases": train_ids, "val_cases": val_ids if cfg.val_iterations > 0 else info.splits.get(cfg.val_split, []),
                "split": cfg.split,
            },
            "plan": plan,
            "code_version": code_version(),
            "world_size": ddp.world,
            "init_from": str(Path(init_from).resolve()) if init_from else None,
            "device": str(dev),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_text(run_dir / RUN_FILE, json.dumps(run_info, indent=2) + "\n")

    # Preprocess once (rank 0), everyone else waits.
    cache = Path(cache_dir) if cache_dir else default_cache_dir(info, plan, run_dir)
    if ddp.is_main:
        cache_dataset(info, plan, sorted(set(train_ids) | set(val_ids)), cache)
    ddp.barrier()

    # Same initial weights everywhere; then per-rank RNG streams (dropout).
    torch.manual_seed(cfg.seed)
    network = build_network(net_cfg, deep_supervision=True).to(dev)
    if cfg.conv_init == "trunc_normal":
        encoder_conv_trunc_normal(network)
    if init_from and checkpoint is None:
        network.load_state_dict(read_checkpoint(Path(init_from))["model"])
        log.info("initial weights from %s", init_from)
    if init_state is not None and checkpoint is None:
        network.load_state_dict(init_state)
    random.seed(cfg.seed + ddp.rank)
    np.random.seed(cfg.seed + ddp.rank)
    torch.manual_seed(cfg.seed + 1000 * ddp.rank)

    optimizer = make_optimizer(cfg, network.parameters())
    epochs, exponent = cfg.epochs, cfg.poly_exponent
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: max(1.0 - e / epochs, 0.0) ** exponent)
    use_amp = cfg.amp and dev.type == "cuda"
    if cfg.amp and not use_amp:
        log.warning("mixed precision (--amp) needs CUDA; training in float32 on %s", dev)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = segmentation_loss(cfg.ds_weights, cfg.batch_dice)

    total_steps = cfg.epochs * cfg.iterations_per_epoch
    start_step = 0
    history: list[dict[str, Any]] = []
    if checkpoint is not None:
        network.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        start_step = int(checkpoint["next_step"])
        history = list(checkpoint.get("history", []))
        partial = checkpoint.get("epoch_partial", {})
        log.info("resuming %s at step %d (epoch %d, iteration %d)", run_dir, start_step,
                 start_step // cfg.iterations_per_epoch, start_step % cfg.iterations_per_epoch)

    model: torch.nn.Module = network
    if ddp.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[dev.index] if dev.type == "cuda" else None)

    dataset = PatchDataset(cache, train_ids, net_cfg.patch_size, cfg.batch_size, cfg.oversample_foreground,
                           cfg.augment, cfg.seed, train=True)
    loader = DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(start_step, total_steps, cfg.batch_size, ddp.rank, ddp.world),
        num_workers=cfg.num_workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
        prefetch_factor=2 if cfg.num_workers > 0 else None,
    )
    writer = None
    if cfg.tensorboard and ddp.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            log.warning("tensorboard is not installed; logging to metrics.jsonl only")

    # A resumed epoch continues the running sums of the interrupted one (same epoch record).
    epoch_loss: list[float] = list(partial.get("losses", []))
    epoch_wait = float(partial.get("wait", 0.0))
    epoch_time = float(partial.get("time", 0.0))

    def save(next_step: int, path: Path) -> None:  # reads the running epoch sums above (nonlocal state)
        if ddp.enabled:
            for buf in network.buffers():  # batch-norm statistics: rank 0's everywhere
                dist.broadcast(buf, 0)
            states: list[Any] = [None] * ddp.world
            dist.all_gather_object(states, _rng_state())
        else:
            states = [_rng_state()]
        if ddp.is_main:
            atomic_torch_save({
                "format": CHECKPOINT_FORMAT,
                "next_step": next_step,
                "epoch": next_step // cfg.iterations_per_epoch,
                "iteration": next_step % cfg.iterations_per_epoch,
                "model": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": states,
                "config_hash": chash,
                "config": cfg.to_dict(),
                "network": net_cfg.to_dict(),
                "world_size": ddp.world,
                "history": history,
                "epoch_partial": {"losses": list(epoch_loss), "wait": epoch_wait, "time": epoch_time},
            }, path, keep_previous=run_dir / PREVIOUS if path == ckpt_path else None)
            log.info("checkpoint %s (step %d)", path, next_step)
        ddp.barrier()

    log_every = max(1, cfg.iterations_per_epoch // 5)
    network.train()
    t_start = time.perf_counter()
    wait_total = step_total = 0.0
    if ddp.is_main and checkpoint is not None:
        # Forget epochs logged after the checkpoint by the interrupted process.
        write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    steps_done = 0
    step_seconds: list[float] = []
    wait_seconds: list[float] = []
    last_loss = float("nan")
    batches = iter(loader)  # draws the workers' base seed from the torch RNG: restore RNG states after it
    if checkpoint is not None:
        states = checkpoint["rng"]
        if len(states) == ddp.world:
            _set_rng_state(states[ddp.rank])
        else:
            log.warning("checkpoint was written by %d process(es), now %d: RNG streams restart", len(states), ddp.world)
    t_prev = time.perf_counter()
    for step in range(start_step, total_steps):
        epoch, it = divmod(step, cfg.iterations_per_epoch)
        image, label = next(batches)
        t_data = time.perf_counter()
        image = image.to(dev, non_blocking=True)
        label = label.to(dev, non_blocking=True)
        loss = train_step(model, optimizer, scaler, loss_fn, image, label, grad_clip=cfg.grad_clip, use_amp=use_amp,
                          parameters=network.parameters())
        last_loss = float(loss)
        t_end = time.perf_counter()
        wait, took = t_data - t_prev, t_end - t_prev
        t_prev = t_end
        wait_total += wait
        step_seconds.append(took)
        wait_seconds.append(wait)
        step_total += took
        epoch_wait += wait
        epoch_time += took
        epoch_loss.append(last_loss)
        steps_done += 1
        if not np.isfinite(last_loss):
            raise TrainingError(f"the loss became {last_loss} at step {step}; lower the learning rate or check the data")
        if on_step is not None and ddp.is_main:
            rate = steps_done / max(step_total, 1e-9)
            on_step(step + 1, total_steps, last_loss, (total_steps - step - 1) / max(rate, 1e-9))

        if ddp.is_main and ((it + 1) % log_every == 0 or it + 1 == cfg.iterations_per_epoch):
            rate = steps_done / max(step_total, 1e-9)
            eta = (total_steps - step - 1) / max(rate, 1e-9)
            log.info("epoch %d/%d it %d/%d loss %.4f lr %.2e %.2f it/s data-wait %.0f%% ETA %s",
                     epoch + 1, cfg.epochs, it + 1, cfg.iterations_per_epoch, last_loss,
                     optimizer.param_groups[0]["lr"], rate, 100 * wait_total / max(step_total, 1e-9),
                     _dt.timedelta(seconds=int(eta)))

        end_of_epoch = it + 1 == cfg.iterations_per_epoch
        if cfg.checkpoint_every_iterations and (step + 1) % cfg.checkpoint_every_iterations == 0 and not end_of_epoch:
            save(step + 1, ckpt_path)
        if end_of_epoch:
            record = {
                "epoch": epoch + 1,
                "step": step + 1,
                "loss": float(np.mean(epoch_loss)) if epoch_loss else None,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": epoch_time,
                "data_wait_share": epoch_wait / max(epoch_time, 1e-9),
            }
            scheduler.step()
            if cfg.val_iterations > 0:
                ddp.barrier()
                if ddp.is_main:
                    record["val_pseudo_dice"] = validate(network, cache, val_ids, net_cfg, cfg, len(info.labels), dev)
                    network.train()
                ddp.barrier()
            history.append(record)
            if ddp.is_main:
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                if writer is not None:
                    for k, v in record.items():
                        if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                            writer.add_scalar(f"train/{k}", v, epoch + 1)
                        elif isinstance(v, dict):
                            for kk, vv in v.items():
                                writer.add_scalar(f"val_dice/{kk}", vv, epoch + 1)
            epoch_loss, epoch_wait, epoch_time = [], 0.0, 0.0
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                save(step + 1, ckpt_path)
        if cancel is not None and cancel.is_set() and step + 1 < total_steps:
            save(step + 1, ckpt_path)
            raise CancelledError(f"training cancelled after step {step + 1} of {total_steps}; the checkpoint "
                                 f"{ckpt_path} holds it (continue with --resume)")

    if ddp.enabled:
        for buf in network.buffers():
            dist.broadcast(buf, 0)
    fingerprint = state_fingerprint(network.state_dict())
    log.info("rank %d final state sha256 %s", ddp.rank, fingerprint)
    if ddp.is_main:
        if start_step < total_steps or not (run_dir / FINAL).exists():
            atomic_torch_save(read_checkpoint(ckpt_path), run_dir / FINAL)
        if writer is not None:
            writer.close()
    log.info("trained %d steps in %.0f s", steps_done, time.perf_counter() - t_start)
    ddp.barrier()
    return TrainResult(
        run_dir=run_dir,
        steps=steps_done,
        epochs=cfg.epochs,
        final_loss=last_loss,
        iterations_per_s=steps_done / max(step_total, 1e-9),
        data_wait_share=wait_total / max(step_total, 1e-9),
        peak_memory_mb=peak_memory_mb(dev),
        state_sha256=fingerprint,
        history=history,
        step_seconds=step_seconds,
        wait_seconds=wait_seconds,
    )


@torch.no_grad()
def validate(network: torch.nn.Module, cache: Path, case_ids: list[str], net_cfg: NetworkConfig, cfg: TrainConfig,
             num_labels: int, dev: torch.device) -> dict[str, float]:
    """nnU-Net's online evaluation: pseudo-Dice per label over deterministic validation patches
    (a third of them centred on foreground), true/false positives summed over all patches."""
    network.eval()
    ds = PatchDataset(cache, case_ids, net_cfg.patch_size, cfg.batch_size, cfg.oversample_foreground,
                      cfg.augment, cfg.seed, train=False)
    tp = np.zeros(num_labels + 1)
    fp = np.zeros(num_labels + 1)
    fn = np.zeros(num_labels + 1)
    for step in range(cfg.val_iterations):
        items = [ds[step * cfg.batch_size + b] for b in range(cfg.batch_size)]
        image = torch.stack([i[0] for i in items]).to(dev)
        label = torch.stack([i[1] for i in items]).to(dev)[:, 0].long()
        out = network(image)
        pred = (out[0] if isinstance(out, (list, tuple)) else out).argmax(1)
        for c in range(1, num_labels + 1):
            p, t = pred == c, label == c
            tp[c] += float((p & t).sum())
            fp[c] += float((p & ~t).sum())
            fn[c] += float((~p & t).sum())
    dice = {str(c): float(2 * tp[c] / max(2 * tp[c] + fp[c] + fn[c], 1e-9)) for c in range(1, num_labels + 1)
            if tp[c] + fn[c] > 0}
    if dice:
        dice["mean"] = float(np.mean(list(dice.values())))
    return dice
