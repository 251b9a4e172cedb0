"""The training loop of ``visionssm train``, for any task (:mod:`visionssm.engine.task`), top to bottom.

:func:`train` prepares the run folder, builds a :class:`Run` (task, model, EMA, optimizer, AMP,
DDP, loaders, schedule), restores it from a checkpoint when resuming, then for each epoch trains
(:meth:`Run.train_epoch`) and evaluates and saves (:meth:`Run.evaluate_and_save`).

One process per device under torchrun: DistributedDataParallel (NCCL on GPUs, gloo on CPUs), a
distributed sampler, metrics summed over ranks; rank 0 alone logs and writes files. Checkpoints
hold everything a resume needs; a resume from an epoch-end checkpoint continues exactly as if the
run had not stopped, and so does one from a ``--checkpoint-steps`` checkpoint with ``--workers 0``
(with workers, the augmentations of the rest of that epoch are drawn afresh).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from visionssm.data import DataError
from visionssm.engine import checkpoints as files
from visionssm.engine.distributed import (
    all_sum,
    broadcast_object,
    convert_sync_batchnorm,
    gather_objects,
    get_rng_state,
    init_distributed,
    param_digest,
    seed_everything,
    set_rng_state,
)
from visionssm.engine.task import (
    ResumableSampler,
    ShardSampler,
    autocast_for,
    create_task,
    peak_memory_mb,
    sample_units,
)
from visionssm.models.checkpoint import CheckpointError, load_state_dict_checked

# flags that describe this invocation, not the run: never restored by --resume
NOT_RESTORED = ("resume", "config", "output", "overwrite")
# flags whose change on a resume rebuilds the learning-rate schedule instead of restoring it
SCHEDULE_FLAGS = ("epochs", "sched", "warmup_epochs", "warmup_lr", "min_lr", "lr")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class Position:
    """Where a run is: what a checkpoint records besides the weights and optimizer state.

    ``loss_sum``, ``time_s`` and ``images`` are those of the current epoch so far.
    """

    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    loss_sum: float = 0.0
    time_s: float = 0.0
    images: int = 0
    best: dict = field(default_factory=dict)


def train(args: argparse.Namespace, config_defaults: dict | None = None) -> dict:
    """Run (or resume) a training run; return the summary that is also written to summary.json.

    ``config_defaults`` are the flags' defaults, used by ``--resume`` to tell which flags a
    Namespace built in Python sets (the command line records them itself in ``args._given``).
    """
    resume_ckpt, overrides = None, []
    if args.resume:
        resume_ckpt = files.load_run_checkpoint(args.resume)
        overrides = restore_config(args, resume_ckpt["config"], config_defaults)
        if args.output is None:  # the run folder the checkpoint is in
            args.output = args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.abspath(args.resume))
    if not args.model or not args.data:
        raise ValueError("--model and --data are required (on the command line or in --config)")
    out = args.output or os.path.join("output", "train", time.strftime("%Y%m%d-%H%M%S") + f"-{args.model}")
    files.prepare_run_folder(out, args)
    if resume_ckpt is not None and resume_ckpt["epoch"] >= args.epochs and resume_ckpt["step_in_epoch"] == 0:
        done = files.read_summary(out)
        if done is not None:  # finished: nothing to do, nothing rewritten
            print(f"{args.resume}: the run has finished its {resume_ckpt['epoch']} epochs; nothing to do "
                  f"(--epochs N with N > {resume_ckpt['epoch']} trains it longer)")
            return done

    rank, world, device = init_distributed(args.device)
    try:
        run = Run(args, out, rank, world, device)
        for line in overrides:
            run.log(f"--resume: {line}")
        if resume_ckpt is not None:
            run.restore(resume_ckpt, rebuild_schedule=any(o.split(":")[0] in SCHEDULE_FLAGS for o in overrides))
        run.open_logs()
        for _ in range(run.pos.epoch, args.epochs):
            run.train_epoch()
            run.evaluate_and_save()
        return run.finish()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def restore_config(args: argparse.Namespace, config: dict, defaults: dict | None = None) -> list[str]:
    """Take every flag of a resumed run's configuration that was not given now; [what was overridden]."""
    given = getattr(args, "_given", None)
    if given is None:  # a Namespace built in Python: what differs from the defaults was given
        given = [k for k, v in vars(args).items() if defaults is None or k not in defaults or v != defaults[k]]
    overrides = []
    for key, value in config.items():
        if key in NOT_RESTORED or not hasattr(args, key):
            continue
        now = getattr(args, key)
        if key not in given:
            setattr(args, key, value)
        elif (list(now) if isinstance(now, tuple) else now) != value:
            overrides.append(f"{key}: {value!r} in the run, {now!r} now")
    return overrides


def run_config(args: argparse.Namespace) -> dict:
    """The run's configuration as plain Python values (tuples to lists), loadable with weights_only=True."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(vars(args).items()) if not k.startswith("_")}


class Run:
    """One training run: the task, the model and all the state that trains it, and the run folder."""

    def __init__(self, args: argparse.Namespace, out: str, rank: int, world: int, device: torch.device):
        self.args, self.out, self.rank, self.world, self.device = args, out, rank, world, device
        self.main = rank == 0
        self.show_progress = self.main and not args.no_progress
        self.task = task = create_task(args, self.show_progress)
        self.model = self.raw_model = task.model
        if args.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.model.to(device)
        if args.sync_bn and world > 1:  # statistics over the global batch (mmseg trains UperNet so)
            self.model = self.raw_model = task.model = convert_sync_batchnorm(self.model, device)
        self.ema = (ModelEmaV3(self.model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
                    if args.model_ema else None)
        opt_kwargs = {k: v for k, v in dict(eps=args.opt_eps, betas=args.opt_betas).items() if v is not None}
        self.optimizer = create_optimizer_v2(self.model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                             momentum=args.momentum, layer_decay=args.layer_decay, **opt_kwargs)
        self.autocast, amp_dtype = autocast_for(device, args.amp, args.amp_dtype)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=ids)
        self._build_loaders()
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
            warmup_lr=args.warmup_lr, min_lr=args.min_lr, step_on_epochs=False,
            updates_per_epoch=self.updates_per_epoch)
        self.pos = Position(best={task.score: -math.inf, "epoch": -1})
        self.fields = ["epoch", "step", "lr", "train_loss", *task.fields, f"ema_{task.score}", "epoch_time_s",
                       "train_img_per_s"]
        self.writer, self.started = None, time.time()
        seed_everything(args.seed + rank)  # different augmentations on each rank

    def log(self, *a, **k) -> None:
        if self.main:
            print(*a, **k)

    def _build_loaders(self) -> None:
        """Per-rank shards, reshuffled each epoch from (seed, epoch); worker seeds come from a generator
        of their own, so loading never touches the global RNG streams."""
        args, task, pin = self.args, self.task, self.device.type == "cuda"
        self.sampler = ResumableSampler(task.train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                        seed=args.seed, drop_last=True)
        self.loader_gen = torch.Generator()
        self.train_loader = DataLoader(task.train_set, batch_size=args.batch_size, sampler=self.sampler,
                                       num_workers=args.workers, drop_last=True, pin_memory=pin,
                                       generator=self.loader_gen, collate_fn=task.train_collate)
        self.val_loader = DataLoader(task.val_set, batch_size=args.batch_size,
                                     sampler=ShardSampler(len(task.val_set), self.rank, self.world),
                                     num_workers=args.workers, pin_memory=pin,
                                     generator=torch.Generator().manual_seed(0), collate_fn=task.val_collate)
        self.updates_per_epoch = len(self.sampler) // args.batch_size // args.grad_accum_steps
        if self.updates_per_epoch < 1:
            raise DataError(f"--batch-size: {args.batch_size} x {args.grad_accum_steps} accumulation steps x "
                            f"{self.world} ranks is more than the {len(task.train_set)} training images")

    # --- checkpoints ---------------------------------------------------------------------------

    def restore(self, ckpt: dict, rebuild_schedule: bool = False) -> None:
        """Take the weights, optimizer, schedule, position and RNG states of a run checkpoint."""
        args, where = self.args, f"--resume {self.args.resume!r}"
        task_was = ckpt["config"].get("task", "classification")
        if task_was != args.task:
            raise CheckpointError(f"{where}: a {task_was} checkpoint, but --task is {args.task!r}")
        load_state_dict_checked(self.raw_model, ckpt["model"], args.resume)
        if self.ema is not None:
            if ckpt.get("model_ema") is None:
                raise CheckpointError(f"{where}: --model-ema is on but the checkpoint has no EMA")
            load_state_dict_checked(self.ema.module, ckpt["model_ema"], args.resume)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if not rebuild_schedule:
                self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{where}: optimizer/scheduler/scaler state does not fit "
                                  f"({type(e).__name__}: {e})") from e
        self.pos = Position(epoch=ckpt["epoch"], step=ckpt["step"], step_in_epoch=ckpt["step_in_epoch"],
                            loss_sum=ckpt["epoch_loss_sum"], time_s=ckpt.get("epoch_time_s", 0.0),
                            images=ckpt.get("epoch_images", 0), best=ckpt["best"])
        if len(ckpt["rng"]) == self.world:
            set_rng_state(ckpt["rng"][self.rank])
        else:
            self.log(f"note: the checkpoint was written by {len(ckpt['rng'])} ranks, this run has {self.world}; "
                     "RNG re-seeded")
            seed_everything(args.seed + self.rank + 1000 * self.pos.step)
        self.scheduler.step_update(num_updates=self.pos.step)
        self.log(f"resumed from {args.resume} at epoch {self.pos.epoch}, step {self.pos.step}")

    def save(self, name: str = "last.pth") -> None:
        """Write the run's state to ``name`` in the run folder (every rank takes part: RNG states)."""
        rngs = gather_objects(get_rng_state())
        if not self.main:
            return
        pos, task = self.pos, self.task
        files.save_checkpoint(dict(
            version=files.CHECKPOINT_VERSION, model=self.raw_model.state_dict(),
            model_ema=self.ema.module.state_dict() if self.ema is not None else None,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), epoch=pos.epoch, step=pos.step, step_in_epoch=pos.step_in_epoch,
            epoch_loss_sum=pos.loss_sum, epoch_time_s=pos.time_s, epoch_images=pos.images, best=pos.best,
            rng=rngs, config=run_config(self.args), classes=task.classes, data_config=task.data_config,
            world_size=self.world), os.path.join(self.out, name))

    def open_logs(self) -> None:
        """The run folder's configuration and metrics files (rank 0), and the first log line."""
        self.out = broadcast_object(self.out)
        if self.main:
            import yaml

            os.makedirs(self.out, exist_ok=True)
            with open(os.path.join(self.out, "args.yaml"), "w") as f:
                yaml.safe_dump(run_config(self.args), f)
            files.truncate_metrics(self.out, self.pos.epoch, self.fields)
            self.writer = _tensorboard(self.out)
        args, task = self.args, self.task
        self.log(f"{args.model} ({args.task}): {sum(p.numel() for p in self.raw_model.parameters()) / 1e6:.3f}M "
                 f"parameters, {len(task.train_set)} training / {len(task.val_set)} validation "
                 f"{sample_units(task)[0]}, "
                 f"{len(task.classes)} classes, {task.data_config['img_size']} px, {self.world} process(es) on "
                 f"{self.device}, {self.updates_per_epoch} steps per epoch")

    # --- one epoch -----------------------------------------------------------------------------

    def train_epoch(self) -> None:
        """Train the epoch ``self.pos.epoch`` from ``self.pos.step_in_epoch`` to its end."""
        args, pos = self.args, self.pos
        self.sampler.set_epoch(pos.epoch)
        self.sampler.skip = pos.step_in_epoch * args.grad_accum_steps * args.batch_size
        self.loader_gen.manual_seed(args.seed * 100003 + pos.epoch * 1009 + self.rank)
        self.model.train()
        bar = _progress(self.updates_per_epoch, pos.step_in_epoch, f"epoch {pos.epoch}", self.show_progress)
        t0, seen, micro, loss_acc = time.time(), 0, 0, 0.0
        before = (pos.time_s, pos.images)  # of this epoch, before a resume
        for batch in self.train_loader:
            if pos.step_in_epoch >= self.updates_per_epoch:
                break  # a tail too short for a whole accumulation is left out
            micro += 1
            last_micro = micro % args.grad_accum_steps == 0
            # under DDP the gradients are averaged across ranks on the last micro-batch only
            sync = self.model.no_sync() if self.world > 1 and not last_micro else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    loss, n = self.task.loss(self.model, batch, self.device)
                self.scaler.scale(loss / args.grad_accum_steps).backward()
            loss_acc = loss_acc + loss.detach().float()
            seen += n
            if not last_micro:
                continue
            step_loss = self._optimizer_step(loss_acc)
            loss_acc = 0.0
            pos.time_s, pos.images = before[0] + time.time() - t0, before[1] + seen * self.world
            if bar is not None:
                if pos.step % args.log_interval == 0 or pos.step_in_epoch == self.updates_per_epoch:
                    rate = f"{seen * self.world / max(time.time() - t0, 1e-9):.0f}"
                    bar.set_postfix({"loss": f"{step_loss:.4f}", "lr": f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                     sample_units(self.task)[1]: rate})
                bar.update(1)
            if args.checkpoint_steps and pos.step % args.checkpoint_steps == 0 \
                    and pos.step_in_epoch < self.updates_per_epoch:
                self.save()
        if bar is not None:
            bar.close()
        pos.time_s, pos.images = before[0] + time.time() - t0, before[1] + seen * self.world
        self.scheduler.step(pos.epoch + 1)
        if self.world > 1:  # BatchNorm statistics: every rank takes rank 0's, as the checkpoint does
            for buf in self.raw_model.buffers():
                dist.broadcast(buf, 0)
        # trained, not yet evaluated: a failing evaluation (a bad validation image) loses no training;
        # a resume from here evaluates this epoch and goes on
        self.save()

    def _optimizer_step(self, loss_acc: torch.Tensor) -> float:
        """One optimizer step after the micro-batches; the loss check is collective, so every rank stops together."""
        args, pos = self.args, self.pos
        stats = all_sum(torch.stack([loss_acc / args.grad_accum_steps,
                                     (~torch.isfinite(loss_acc)).float()]).to(self.device))
        if stats[1] > 0:
            raise NonFiniteLossError(
                f"the training loss became {loss_acc.item()} at step {pos.step + 1} (epoch {pos.epoch}, step "
                f"{pos.step_in_epoch + 1} of the epoch); stopped before the update. The last checkpoint is "
                f"{os.path.join(self.out, 'last.pth')}; try a lower --lr, --clip-grad, or no --amp")
        if args.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.raw_model.parameters(), args.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        pos.step += 1
        pos.step_in_epoch += 1
        if self.ema is not None:
            self.ema.update(self.raw_model, step=pos.step)
        self.scheduler.step_update(num_updates=pos.step)
        step_loss = stats[0].item() / self.world
        pos.loss_sum += step_loss
        return step_loss

    def evaluate_and_save(self) -> None:
        """Evaluate the trained epoch (model and EMA), log its row, then write best.pth (if better) and last.pth."""
        pos, task, score = self.pos, self.task, self.task.score
        val = task.evaluate(self.raw_model, self.val_loader, self.device, self.autocast)
        ema_val = task.evaluate(self.ema.module, self.val_loader, self.device, self.autocast) if self.ema else {}
        row = dict(epoch=pos.epoch, step=pos.step, lr=self.optimizer.param_groups[0]["lr"],
                   train_loss=pos.loss_sum / max(pos.step_in_epoch, 1), **{k: val[k] for k in task.fields},
                   **{f"ema_{score}": ema_val.get(score)}, epoch_time_s=pos.time_s,
                   train_img_per_s=pos.images / max(pos.time_s, 1e-9))
        improved = max(val[score], ema_val.get(score, -math.inf)) > pos.best[score]
        if improved:
            pos.best = dict(val if val[score] >= ema_val.get(score, -math.inf) else ema_val, epoch=pos.epoch)
        if self.main:  # before the checkpoint: a resume from it drops the rows of epochs it runs again
            files.write_metrics(self.out, row, self.fields, self.writer)
            ema_note = f", EMA {score} {ema_val[score]:.2f}" if ema_val else ""
            self.log(f"epoch {pos.epoch}: train loss {row['train_loss']:.4f}, {task.describe(val)}{ema_note}, "
                     f"{pos.time_s:.1f} s, {row['train_img_per_s']:.0f} {sample_units(task)[1]}")
        self.pos = Position(epoch=pos.epoch + 1, step=pos.step, best=pos.best)
        if improved:  # best before last: a kill between the two leaves last.pth to redo this step
            self.save("best.pth")
        self.save()

    def finish(self) -> dict:
        """The summary of the whole run (resumed parts included, from metrics.jsonl), written to summary.json."""
        digests = gather_objects(param_digest(self.raw_model))
        if len(set(digests)) > 1:
            raise RuntimeError(f"the ranks' weights differ after training (digests {digests}); this is a bug")
        args, score, best = self.args, self.task.score, self.pos.best
        rows = files.read_metrics(self.out) if self.main else []
        summary = dict(
            task=args.task, model=args.model, data=args.data, epochs=args.epochs, steps=self.pos.step,
            world_size=self.world, device=str(self.device),
            params_m=sum(p.numel() for p in self.raw_model.parameters()) / 1e6,
            img_size=self.task.data_config["img_size"], final=rows[-1] if rows else {},
            **{f"best_{score}": best[score]}, best_epoch=best["epoch"], wall_s=time.time() - self.started,
            train_img_per_s=files.run_throughput(rows), peak_memory_mb=peak_memory_mb(self.device),
            rank_param_digests=digests, output=self.out)
        if self.main:
            files.write_json(summary, os.path.join(self.out, "summary.json"))
            if self.writer is not None:
                self.writer.close()
            if rows:
                self.log(f"done: {score} {rows[-1][score]:.2f} (best {best[score]:.2f} at epoch {best['epoch']}), "
                         f"{summary['train_img_per_s']:.0f} {sample_units(self.task)[1]}, "
                         f"peak memory {summary['peak_memory_mb']:.0f} MB, "
                         f"{summary['wall_s']:.1f} s; checkpoints in {self.out}")
        return summary


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def _tensorboard(out: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: TensorBoard is not installed
        return None
    return SummaryWriter(os.path.join(out, "tensorboard"))

