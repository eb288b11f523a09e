"""The training loop on megatron-core: parallel state, DDP, optimizer, schedules.

`Trainer(cfg)` builds everything for this rank (resuming from `cfg.checkpoint.dir` when
it holds a checkpoint); `Trainer.run()` trains to `cfg.train.iters`. The trainer runs
steps, schedules, logging, validation and checkpoints; every other feature is a component
(`pap.callbacks.Callback`) that listens to its events and owns its state. The components
of a run come from its config (`pap.components.callbacks_for`) unless given; the forward
step and loss are injectable (`pap.forward_step`).
"""

from __future__ import annotations

import gc
import os
import time
import weakref
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from pap import checkpoint, resume_settings
from pap.arch import Arch
from pap.callbacks import Callback, StepResult
from pap.components import callbacks_for
from pap.config import PapConfig
from pap.data import Batches, BatchStream, build_datasets
from pap.distributed import Topology, init_distributed
from pap.errors import PapError, describe_os_error
from pap.exit_request import ExitRequest
from pap.forward_step import lm_forward_step
from pap.model import build_model, describe_implementation, fusions_off_without_gpu
from pap.progress import Progress, truncate_jsonl
from pap.run_lock import FileLock, RunLock


class Trainer:
    """One rank's share of a pap training run.

    `callbacks`: the run's components (default: those its config asks for,
    `pap.components.callbacks_for`); `forward_step`: megatron-core's `forward_step_func`
    contract (default: the next-token loss, `pap.forward_step.lm_forward_step`).
    """

    def __init__(self, cfg: PapConfig, topology: Optional[Topology] = None,
                 callbacks: Optional[Sequence[Callback]] = None, forward_step: Optional[Callable] = None):
        if callbacks is None:
            callbacks = callbacks_for(cfg)
        self.callbacks: List[Callback] = sorted(callbacks, key=lambda c: -c.priority)
        self.forward_step = _choose_forward_step(forward_step, self.callbacks)
        self.progress: Optional[Progress] = None
        """The run's printer and logger while `run` is going (None before)."""
        self.last_saved: Optional[int] = None
        """The iteration of the last checkpoint this run wrote or resumed from."""
        self.cfg = cfg
        self.topo = topology or init_distributed(cfg.parallel.tp, cfg.parallel.pp, cfg.train.seed)
        # Before anything is read from or written to the run directory: one run per directory.
        self.lock = _lock_run_directory(cfg.checkpoint.dir, self.topo.rank == 0) if cfg.checkpoint.dir else None
        try:
            self._start(cfg)
        except BaseException:
            if self.lock is not None:  # a failed start leaves the directory free
                self.lock.release()
            raise

    def _start(self, cfg: PapConfig) -> None:
        """Everything after the lock: resume point, data, model, optimizer, components."""
        # megatron-core is imported where it is used: importing it is slow, and pap's
        # config and CLI errors come before it.
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        t = cfg.train
        # Before anything is written: `transformer_impl: te` without Transformer Engine stops here.
        implementation = describe_implementation(cfg.model.transformer_impl)
        self.resume = _verified_resume_point(cfg, self.topo.rank == 0)
        self.resume_changes: List[str] = []
        """The `changed on resume: ...` lines of this run's settings (`pap.resume_settings`)."""
        if self.resume is not None:
            check_resume_matches_config(self.resume, cfg)
            if not self.resume.model_only:
                self.resume_changes = check_resume_settings(self.resume, cfg)
        self.init_from = None
        if self.resume is None and cfg.checkpoint.init_from:
            self.init_from = checkpoint.read(cfg.checkpoint.init_from)
            problem = checkpoint.verify(self.init_from.path) if self.topo.rank == 0 else None
            if _agree(1 if problem else 0):
                raise PapError(f"checkpoint.init_from: {problem or 'the source checkpoint is damaged (see rank 0)'}")
            note = checkpoint.unverified(self.init_from.path) if self.topo.rank == 0 else None
            if note:
                print(f"pap: checkpoint.init_from: {note}", flush=True)
            check_same_model_settings(self.init_from, cfg)
        source = self.resume or self.init_from
        self.arch: Arch = source.arch if source else Arch.from_model_config(cfg.model)
        # The model the run started from (`checkpoint.init_from`, else the configured model).
        self.source_arch: Arch = (checkpoint.read(cfg.checkpoint.init_from).arch if cfg.checkpoint.init_from
                                  else Arch.from_model_config(cfg.model))

        cache_dir = cfg.data.cache_dir or (f"{cfg.checkpoint.dir}/data_cache" if cfg.checkpoint.dir else None)
        valid_samples = t.eval_iters * t.global_batch_size
        train_ds, valid_ds = build_datasets(cfg, t.iters * t.global_batch_size, valid_samples, cache_dir)
        self.train_batches = Batches(train_ds, t.micro_batch_size, t.global_batch_size,
                                     self.topo.dp_rank, self.topo.dp)
        self.train_stream = BatchStream(self.train_batches, cfg.data.num_workers, cfg.data.prefetch_factor,
                                        cfg.data.pin_memory)
        self.valid_batches = (Batches(valid_ds, t.micro_batch_size, t.global_batch_size, self.topo.dp_rank,
                                      self.topo.dp) if valid_ds is not None and t.eval_iters else None)

        if self.topo.rank == 0:
            print(f"pap: {implementation}", flush=True)
            off = fusions_off_without_gpu(cfg)
            if off:
                print(f"pap: no CUDA device: {', '.join('model.' + name for name in off)} off", flush=True)
        # Weights are drawn only for a fresh start; a resume or init_from writes them next.
        self.rebuild(self.arch, draw=source is None)
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0, max_lr=t.lr, min_lr=t.min_lr,
            lr_warmup_steps=t.warmup_iters, lr_decay_steps=t.lr_decay_iters or t.iters,
            lr_decay_style=t.lr_decay_style, start_wd=t.weight_decay, end_wd=t.weight_decay,
            wd_incr_steps=t.iters, wd_incr_style="constant",
        )

        self.iteration = 0
        self.consumed_samples = 0
        if self.resume and not self.resume.model_only:
            checkpoint.load(self.resume, self.model.module, self.optimizer, self.scheduler, self.layout)
            resume_settings.apply_schedule(self.scheduler, self.resume.config, cfg.to_dict(), t.iters)
            self.iteration = self.resume.iteration
            self.consumed_samples = self.resume.consumed_samples
        elif source:
            # The optimizer exists already: its fp32 masters must take the source's weights too.
            checkpoint.load_model(source, self.model.module, self.optimizer)
        for callback in self.callbacks:
            callback.setup(self)
        if self.iteration and self.callbacks:
            saved = checkpoint.load_rank_state(self.resume, self.layout)
            for callback in self.callbacks:
                callback.restore(self, saved.get(callback.name) if saved is not None else None, self.resume.path)
        self.exit_request = ExitRequest(t.exit_file, t.exit_signal, self.topo.rank == 0)
        self.exit_voted = False

    def rebuild(self, arch: Arch, draw: bool = False, fill=None) -> Tuple[object, object]:
        """(Re)build this rank's model stage, DDP wrapper and optimizer for `arch`; returns
        (DDP-wrapped model, optimizer).

        With `draw`, weights come from pap.init; without, they are left as allocated, for
        callers that write the training state next (a shape change, a resume). The LR
        scheduler is kept. The previous model, DDP buffers and optimizer are freed first.
        `fill` (`pap.sharding.reshard.Rebuild` says its three calls) writes the weights
        into the new model stage before DDP copies them into its buffers, parks the fp32
        masters in DDP's new gradient buffer before the optimizer allocates its own, and
        writes the optimizer state once the optimizer exists, so old and new copies of each
        coexist only briefly.
        """
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.distributed import finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        cfg, t = self.cfg, self.cfg.train
        self.release()
        self.arch = arch
        module = build_model(arch, cfg, draw=draw)
        if fill is not None:
            fill.weights(module)
        self.config = module.config
        self.model = DistributedDataParallel(
            config=self.config,
            ddp_config=DistributedDataParallelConfig(
                grad_reduce_in_fp32=True, overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
                overlap_param_gather=cfg.parallel.overlap_param_gather, bucket_size=cfg.parallel.bucket_size,
                use_distributed_optimizer=cfg.parallel.distributed_optimizer),
            module=module,
        )
        if fill is not None:
            fill.stash_masters(module)
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam", lr=t.lr, min_lr=t.min_lr, weight_decay=t.weight_decay,
                adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2, adam_eps=t.adam_eps,
                clip_grad=t.clip_grad, bf16=cfg.model.params_dtype == "bf16",
                params_dtype=self.config.params_dtype,
                use_distributed_optimizer=cfg.parallel.distributed_optimizer),
            [self.model],
        )
        if fill is not None:
            fill.optimizer_state(module, self.optimizer)
        self.config.finalize_model_grads_func = finalize_model_grads
        self.config.no_sync_func = self.model.no_sync
        self.config.grad_scale_func = self.optimizer.scale_loss
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.optimizer = self.optimizer
            scheduler.step(increment=0)  # write the current lr / wd into the new param groups
        return self.model, self.optimizer

    def release(self) -> None:
        """Drop every reference to the current model, DDP wrapper and optimizer so they are freed
        (`rebuild` does it first; call it when done with a trainer in a longer-lived process).

        Plain reference counting does not free them: DDP's backward hooks live on the
        params' gradient accumulators (C++ autograd nodes the garbage collector cannot see
        through) and close over the DDP object, and the model's config holds bound methods
        of DDP and the optimizer (`no_sync_func`, `grad_scale_func`) plus
        `finalize_model_grads_func`. Break those links and the objects go at once.
        """
        model = getattr(self, "model", None)
        if model is None:
            return
        config = self.config
        config.no_sync_func = config.grad_scale_func = config.finalize_model_grads_func = None
        model.grad_accs.clear()  # the hooks' closures reference the DDP object
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.optimizer = None
        alive = weakref.ref(model)
        self.model = self.optimizer = self.config = None
        del model, config
        # With those links broken, reference counting frees everything at once; a full
        # collection (~0.2 s with megatron loaded) runs only if some other cycle kept it.
        if alive() is not None:
            gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Free the model, DDP wrapper and optimizer, stop data workers, and give up the run
        directory's lock."""
        self.release()
        if getattr(self, "train_stream", None) is not None:
            self.train_stream.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # ---- facts -----------------------------------------------------------------------------
    @property
    def layout(self) -> dict:
        return {"tp": self.topo.tp, "pp": self.topo.pp, "dp": self.topo.dp,
                "distributed_optimizer": self.cfg.parallel.distributed_optimizer}

    @property
    def tokens_per_iter(self) -> int:
        return self.cfg.train.global_batch_size * self.cfg.data.seq_length

    # ---- one step --------------------------------------------------------------------------
    def forward_backward(self, microbatches, forward_only: bool = False) -> float:
        """Run the pipeline schedule over `microbatches`; returns the global mean loss.

        Gradients (unless `forward_only`) are left reduced in the DDP buffers.
        """
        from megatron.core.pipeline_parallel import get_forward_backward_func

        # A forward step whose stages send more than the hidden state widens the schedule's shapes.
        adjust = getattr(self.forward_step, "adjust_tensor_shapes_fn", None)
        adjust = adjust(forward_only) if adjust is not None and self.topo.pp > 1 else None
        losses = get_forward_backward_func()(
            forward_step_func=self.forward_step,
            data_iterator=iter(microbatches),
            model=[self.model],
            num_microbatches=len(microbatches),
            seq_length=self.cfg.data.seq_length,
            micro_batch_size=self.cfg.train.micro_batch_size,
            forward_only=forward_only,
            **({"adjust_tensor_shapes_fn": adjust} if adjust is not None else {}),
        )
        return self._global_mean_loss(losses)

    def _global_mean_loss(self, losses) -> float:
        """Mean of the last stage's micro-batch losses over data-parallel ranks, on every rank.

        The step's one world-wide collective: it also carries each rank's exit-request vote
        (`self.exit_voted` is the agreed verdict), and the micro-batch losses reach the host
        in one copy, not one synchronisation each."""
        from megatron.core import parallel_state as ps

        holder = self.topo.is_last_stage and ps.get_tensor_model_parallel_rank() == 0
        total = torch.zeros(3, dtype=torch.float64)
        if holder and losses:
            total[0] = float(torch.stack([x["lm loss"].detach().float() for x in losses]).mean())
            total[1] = 1.0
        exit_request = getattr(self, "exit_request", None)
        total[2] = 1.0 if exit_request is not None and exit_request.local_vote() else 0.0
        dist.all_reduce(total)
        self.exit_voted = ExitRequest.agreed(float(total[2]))
        return float(total[0] / total[1])

    def train_step(self) -> StepResult:
        """One optimizer step on the next global batch."""
        start = time.time()
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        loss = self.forward_backward(self.train_stream.microbatches(self.consumed_samples))
        for callback in self.callbacks:
            callback.post_backward(self)
        update_ok, grad_norm, _ = self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        if update_ok:
            self.scheduler.step(increment=1)
        self.iteration += 1
        self.consumed_samples += self.cfg.train.global_batch_size
        result = StepResult(loss=loss, grad_norm=float(grad_norm or 0.0), lr=lr,
                            seconds=time.time() - start, skipped=not update_ok)
        for callback in self.callbacks:
            callback.post_step(self, result)
        # The step's time includes its components' work, so throughput shows their cost.
        result.seconds = time.time() - start
        return result

    @torch.no_grad()
    def evaluate(self) -> Optional[float]:
        """Mean loss over the fixed first `train.eval_iters` global batches of the validation split."""
        if self.valid_batches is None:
            return None
        self.model.eval()
        losses = [
            self.forward_backward(self.valid_batches.microbatches(i * self.cfg.train.global_batch_size),
                                  forward_only=True)
            for i in range(self.cfg.train.eval_iters)
        ]
        self.model.train()
        return sum(losses) / len(losses)

    def sync_params(self) -> None:
        """Make every rank's model params current. With `parallel.overlap_param_gather` the
        updated params arrive bucket by bucket during the next forward; whatever reads them
        outside a forward (a change of shapes, a checkpoint save) calls this first."""
        if self.cfg.parallel.overlap_param_gather:
            self.model.start_param_sync(force_sync=True)

    def save(self) -> None:
        """Checkpoint this iteration (collective), with every component's state."""
        self.sync_params()
        states = {c.name: state for c in self.callbacks if (state := c.state_dict()) is not None}

        def write_extra(directory) -> None:
            for callback in self.callbacks:
                callback.write_checkpoint(self, directory)

        checkpoint.save(self.cfg.checkpoint.dir, self.iteration, self.consumed_samples, self.arch,
                        self.model.module, self.optimizer, self.scheduler, self.layout, self.cfg.to_dict(),
                        rank_state=states or None, write_extra=write_extra if self.callbacks else None)
        self.last_saved = self.iteration

    def callback(self, name: str) -> Optional[Callback]:
        """The run's component called `name`, or None."""
        return next((c for c in self.callbacks if c.name == name), None)

    # ---- the loop --------------------------------------------------------------------------
    def run(self) -> Optional[float]:
        """Train to `train.iters` with logging, validation and checkpoints; returns the final validation loss."""
        cfg = self.cfg
        tb_dir = cfg.log.tensorboard_dir or (f"{cfg.checkpoint.dir}/tensorboard" if cfg.checkpoint.dir else None)
        metrics = cfg.log.metrics_file or (f"{cfg.checkpoint.dir}/metrics.jsonl" if cfg.checkpoint.dir else None)
        metrics_lock = _lock_metrics_file(metrics, cfg.checkpoint.dir, self.topo.rank == 0)
        if self.topo.rank == 0:
            for path in (tb_dir, metrics and os.path.dirname(metrics)):
                if path:
                    os.makedirs(path, exist_ok=True)
            truncate_jsonl(metrics, self.iteration)
        try:
            progress = self.progress = Progress(self.topo.rank == 0, cfg.train.iters, tb_dir, metrics)
            return self._loop(progress)
        finally:
            if metrics_lock is not None:
                metrics_lock.release()

    def _loop(self, progress: Progress) -> Optional[float]:
        """`run` once the logs are open."""
        cfg = self.cfg
        progress.print(
            f"pap: {self.arch.num_params():,} parameters | tp={self.topo.tp} pp={self.topo.pp} dp={self.topo.dp} | "
            f"global batch {cfg.train.global_batch_size} x {cfg.data.seq_length} tokens | "
            + (f"resumed from {self.resume.path} at iteration {self.iteration}" if self.iteration
               else f"weights from {(self.resume or self.init_from).path}" if (self.resume or self.init_from)
               else "fresh start"))
        for line in self.resume_changes:
            progress.print(f"pap: {line}")
        if self.resume is not None and self.iteration >= cfg.train.iters:
            progress.print(f"pap: {self.resume.path} is at iteration {self.iteration}, train.iters is "
                           f"{cfg.train.iters}: nothing to train; raise train.iters to train on")
        for callback in self.callbacks:
            callback.on_train_start(self)
        window_loss, window_steps, window_seconds = 0.0, 0, 0.0
        self.last_saved = self.iteration if self.resume else None
        try:
            while self.iteration < cfg.train.iters:
                # FLOPs of the shape this step runs on (a component may change it after the step),
                # and of what components add to it (a teacher's forward).
                flops_per_token = self.arch.flops_per_token(cfg.data.seq_length) + sum(
                    c.extra_flops_per_token(self) for c in self.callbacks)
                flops_per_iter = flops_per_token * self.tokens_per_iter
                step = self.train_step()
                window_loss += step.loss
                window_steps += 1
                window_seconds += step.seconds
                scalars = {
                    "lm loss": step.loss, "learning-rate": step.lr, "grad-norm": step.grad_norm,
                    "iteration-time": step.seconds,
                    "throughput": flops_per_iter / step.seconds / 1e12 / self.topo.world_size,
                    "tokens-per-sec": self.tokens_per_iter / step.seconds,
                }
                for callback in self.callbacks:
                    scalars.update(callback.scalars(self))
                progress.scalars(self.iteration, scalars)
                if self.iteration % cfg.log.interval == 0 or self.iteration == cfg.train.iters:
                    notes = " ".join(note for c in self.callbacks if (note := c.progress_note(self)))
                    progress.train_line(self.iteration, self.iteration * self.tokens_per_iter,
                                        window_loss / window_steps, step.lr,
                                        window_steps * self.tokens_per_iter / window_seconds, notes)
                    window_loss, window_steps, window_seconds = 0.0, 0, 0.0
                if cfg.train.eval_interval and self.iteration % cfg.train.eval_interval == 0 \
                        and self.iteration < cfg.train.iters:
                    self.report_validation()
                for callback in self.callbacks:
                    callback.on_step_logged(self)
                if cfg.checkpoint.dir and cfg.checkpoint.save_interval \
                        and self.iteration % cfg.checkpoint.save_interval == 0 and self.last_saved != self.iteration:
                    self.save()
                    progress.print(f"saved checkpoint {checkpoint.iteration_dir(cfg.checkpoint.dir, self.iteration)}")
                for callback in self.callbacks:
                    callback.on_step_end(self)
                if self.exit_voted:  # agreed in this step's loss all-reduce
                    if cfg.checkpoint.dir and self.last_saved != self.iteration:
                        self.save()
                    self.exit_request.acknowledge()
                    progress.print(f"pap: exit requested: stopped at iteration {self.iteration}"
                                   + (f", checkpoint {checkpoint.iteration_dir(cfg.checkpoint.dir, self.iteration)}"
                                      if cfg.checkpoint.dir else " (no checkpoint.dir: nothing saved)"))
                    return None
            final = self.report_validation()
            if cfg.checkpoint.dir and cfg.checkpoint.save_at_end and self.last_saved != self.iteration:
                self.save()
                progress.print(f"saved checkpoint {checkpoint.iteration_dir(cfg.checkpoint.dir, self.iteration)}")
            return final
        finally:
            progress.close()

    def report_validation(self) -> Optional[float]:
        """Evaluate, print and log the validation loss at this iteration (collective)."""
        loss = self.evaluate()
        if loss is not None:
            self.progress.print(f"validation loss at iteration {self.iteration}: {loss:.6f}")
            self.progress.scalars(self.iteration, {"lm loss validation": loss})
        return loss


def _choose_forward_step(given: Optional[Callable], callbacks: Sequence[Callback]) -> Callable:
    """The run's forward step: the one given, else a component's (`Callback.forward_step`),
    else the next-token step. Two sources of the loss are refused."""
    offered = [(c.name, step) for c in callbacks if (step := c.forward_step()) is not None]
    if len(offered) + (given is not None) > 1:
        names = [name for name, _ in offered] + (["Trainer(forward_step=...)"] if given is not None else [])
        raise PapError(f"{' and '.join(names)} each set the training loss; a run has one forward step")
    if given is not None:
        return given
    return offered[0][1] if offered else lm_forward_step


def _agree(value: int) -> int:
    """Rank 0's `value`, on every rank."""
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def _verified_resume_point(cfg: PapConfig, is_rank0: bool) -> Optional["checkpoint.ResumeState"]:
    """The newest complete checkpoint of `checkpoint.dir` whose files pass their checksums.

    Rank 0 reads the files once and every rank follows its verdict. A damaged newest
    checkpoint (a file that fails its checksum, or a state file that cannot be read) stops
    the run with its name and the damaged file, unless `checkpoint.fallback` allows resuming
    from the newest older one that passes; a damaged checkpoint older than the one chosen
    is never read. What the checksums do not cover is said once. A tracker pointed back at
    an older checkpoint, with newer ones that the resume would replace, is refused unless
    `checkpoint.rollback`.
    """
    candidates = checkpoint.checkpoint_dirs(cfg.checkpoint.dir)
    chosen, message = -1, ""
    if is_rank0:
        message = _rollback_problem(cfg)
        for index, candidate in enumerate(candidates if not message else []):
            problem = checkpoint.verify(candidate) or _state_problem(candidate)
            if problem is None:
                chosen = index
                note = checkpoint.unverified(candidate)
                if note:
                    print(f"pap: {note}", flush=True)
                break
            if not cfg.checkpoint.fallback:
                older = next(iter(candidates[index + 1:]), None)
                message = problem + ("; set checkpoint.fallback=true to resume from the previous complete "
                                     f"checkpoint ({older})" if older else "; no older checkpoint to fall back to")
                break
            print(f"pap: {problem}; falling back to an older checkpoint", flush=True)
        else:
            if candidates and not message:
                message = f"every checkpoint in {cfg.checkpoint.dir} is damaged; see the lines above"
    chosen = _agree(-2 if message else chosen)
    if chosen == -2:
        raise PapError(message or f"the checkpoints in {cfg.checkpoint.dir} are damaged (see rank 0)")
    return checkpoint.read_state(candidates[chosen]) if chosen >= 0 else None


def _state_problem(path) -> Optional[str]:
    """What is wrong with checkpoint `path`'s state file (None: it reads)."""
    try:
        checkpoint.read_state(path)
    except PapError as exc:
        return f"checkpoint {path} is damaged: {exc}"
    return None


def _rollback_problem(cfg: PapConfig) -> str:
    """Why resuming from the tracker's checkpoint is refused ("" when it is not), and, on the
    way, the line naming the newer checkpoints a resume from it replaces."""
    root = cfg.checkpoint.dir
    if not root or checkpoint.tracker_iteration(root) is None:
        return ""
    tracked = checkpoint.iteration_dir(root, checkpoint.tracker_iteration(root))
    complete = checkpoint.checkpoint_dirs(root)
    newer = [p for p in complete if p.name > tracked.name]
    if not newer or tracked not in complete:  # (a tracker naming no checkpoint: the newest is used)
        return ""
    names = ", ".join(p.name for p in newer)
    by_hand = checkpoint.overwritten_by_rollback(root)
    if by_hand and not cfg.checkpoint.rollback:
        return (f"{Path(root) / checkpoint.TRACKER} names {tracked.name} but newer complete checkpoints exist "
                f"({names}); a resume from {tracked.name} would replace them: set checkpoint.rollback=true to "
                f"roll back, or restore the tracker to {newer[-1].name.split('_')[1].lstrip('0') or '0'}")
    why = "checkpoint.rollback=true" if by_hand else "a save ended before updating the tracker"
    print(f"pap: resuming from {tracked.name}, which {checkpoint.TRACKER} names ({why}); the newer "
          f"{names} will be replaced as the run saves", flush=True)
    return ""


def _lock_metrics_file(metrics: Optional[str], directory: Optional[str], is_rank0: bool):
    """Rank 0 locks a `log.metrics_file` that lies outside the run directory (whose own lock
    covers the files in it) for the run's life: a second run naming the same file stops
    instead of trimming or emptying the first one's lines. Every rank raises alike."""
    lock, message = None, ""
    inside = metrics and directory and os.path.abspath(metrics).startswith(os.path.abspath(directory) + os.sep)
    if is_rank0 and metrics and not inside:
        try:
            lock = FileLock(metrics, "log.metrics_file").acquire()
        except PapError as exc:
            message = str(exc)
        except OSError as exc:
            message = f"log.metrics_file {metrics}: {describe_os_error(exc)}"
    if _agree(1 if message else 0):
        raise PapError(message or "log.metrics_file is in use by another run (see rank 0)")
    return lock


def _lock_run_directory(directory: str, is_rank0: bool):
    """Rank 0 takes `directory`'s `RunLock`; every rank raises the same PapError if it cannot."""
    lock, message = None, ""
    if is_rank0:
        try:
            lock = RunLock(directory).acquire()
        except PapError as exc:
            message = str(exc)
        except OSError as exc:  # the directory cannot be made or written: every rank stops alike
            message = f"checkpoint.dir {directory}: {describe_os_error(exc)}"
    failed = torch.tensor([1 if message else 0], dtype=torch.int32)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if failed.item():
        raise PapError(message or f"checkpoint.dir {directory} is in use by another run (see rank 0)")
    if lock is not None and lock.took_over:
        print(f"pap: {lock.path}: its previous holder ({lock.took_over}) ended without releasing it; "
              f"taking the lock over", flush=True)
    return lock


# Model settings a resumed run takes from its checkpoint; a config that says otherwise is a mistake.
_RESUMED_MODEL_KEYS = ("vocab_size", "make_vocab_size_divisible_by", "hidden_size", "num_layers",
                       "num_attention_heads", "num_query_groups", "head_dim", "ffn_hidden_size", "tie_embeddings",
                       "rope_theta", "norm_eps")


def check_resume_matches_config(resume: "checkpoint.ResumeState", cfg: PapConfig) -> None:
    """A resumed run continues its checkpoint's model: refuse a config whose `model` section
    was changed since the run started (it would otherwise be ignored without a word)."""
    saved = resume.config.get("model", {})
    for key in _RESUMED_MODEL_KEYS:
        if key in saved and saved[key] != getattr(cfg.model, key):
            raise PapError(f"checkpoint.dir {cfg.checkpoint.dir} holds a run started with model.{key}={saved[key]!r} "
                           f"({resume.path.name}) but the config says {getattr(cfg.model, key)!r}; a resumed run "
                           f"keeps its checkpoint's model: set model.{key}={saved[key]} or choose another "
                           f"checkpoint.dir")


def check_resume_settings(resume: "checkpoint.ResumeState", cfg: PapConfig) -> List[str]:
    """The settings changed since `resume` was written: the `changed on resume` lines for those
    a resume applies; PapError for one it refuses (`pap.resume_settings`), and for a
    `train.iters` below the checkpoint's iteration."""
    if cfg.train.iters < resume.iteration:
        raise PapError(f"train.iters ({cfg.train.iters}) is below the iteration of {resume.path} "
                       f"({resume.iteration}): the run is past it and there is nothing to train; set "
                       f"train.iters > {resume.iteration} to train on, or choose another checkpoint.dir")
    return resume_settings.review(resume.config, cfg.to_dict(), cfg.checkpoint.allow_changes, str(resume.path))


def check_same_model_settings(source: "checkpoint.ResumeState", cfg: PapConfig) -> None:
    """Settings that the weights depend on but `Arch` does not record must agree with the config."""
    mismatch = source.setting_mismatch(cfg.model, ("vocab_size", "rope_theta", "norm_eps", "tie_embeddings"))
    if mismatch:
        key, saved, configured = mismatch
        raise PapError(f"checkpoint.init_from {source.path}: model.{key} is {saved!r} there but "
                       f"{configured!r} in the config; set model.{key}={saved}")


def ensure_world_fits(cfg: PapConfig, world_size: int) -> None:
    """Errors that depend on the number of processes, checked before any work."""
    mp = cfg.parallel.tp * cfg.parallel.pp
    if world_size % mp:
        raise PapError(f"{world_size} processes cannot hold parallel.tp * parallel.pp = {mp}; "
                       f"launch a multiple of {mp} processes")
    dp = world_size // mp
    per_step = cfg.train.micro_batch_size * dp
    if cfg.train.global_batch_size % per_step:
        raise PapError(f"train.global_batch_size ({cfg.train.global_batch_size}) must be a multiple of "
                       f"train.micro_batch_size * data-parallel size ({cfg.train.micro_batch_size} * {dp})")
