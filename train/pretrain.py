"""D-BETA pretraining (MEM + MLM + ETM + ETS) with Hugging Face Accelerate: one process or many (DDP), CPU or GPU.

    python -m train.pretrain --config train/configs/small_cpu.yaml --dataset DATA --n3s N3S --output-dir runs/small
    python -m train.pretrain --config ... --mimic-root MIMIC_IV_ECG --output-dir runs/small  # no prepared copy
    accelerate launch --multi_gpu --num_processes 2 -m train.pretrain --config ... --output-dir runs/small
    python -m train.pretrain --config ... --output-dir runs/small --resume        # continue exactly
    python -m train.pretrain --output-dir runs/small --export-only runs/small/checkpoints/checkpoint_7 \
        [--push-to-hub my-org/d-beta]
    python -m train.pretrain --print-config [--config ...]                         # every setting, with help

On a CPU-only machine `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.15 routes --cpu to
its single-process launcher); `--multi_gpu --num_processes 2` starts two processes that train with DDP over gloo.
Settings: train/settings.py. The precision is `train.mixed_precision` ("no" | "bf16"), not accelerate's flag.

Outputs in OUTPUT (--output-dir):
    run.lock                          held while a run (or --export-only) uses the folder: a second one is refused
    run_config.json                   the resolved settings
    checkpoints/checkpoint_N/         see train/checkpoints.py (safe to load, written atomically)
    logs/dbeta-pretrain/              TensorBoard events
    model/                            the export (--export-dir puts it elsewhere)
    metrics.json                      status, steps, final training losses, validation figures, export/push result

Resuming (--resume) picks the newest checkpoint that verifies and loads (a damaged one is skipped with a warning).
The data order continues exactly: the batch sampler is a pure function of (seed, position) and restarts at the
saved position; dropout and the MEM masks are re-seeded from (seed, rank, micro-batch) at every micro-batch, so a
resumed run reproduces an uninterrupted one.

SIGINT / SIGTERM: the current optimizer step finishes, a checkpoint is saved, the process exits with code 3; a
second SIGINT aborts at once. A worker started by `accelerate launch` also receives SIGTERM when the launcher dies.
A step whose loss or gradient norm is not finite is skipped (train.max_bad_steps of them are tolerated); past that
the run stops with code 5, keeping the last good checkpoint and exporting nothing.

Exit codes: 0 finished (exported; pushed if asked), 2 bad settings or arguments (nothing built) or the folder is in
use, 3 stopped by a signal after saving a checkpoint, 4 the export is complete but the Hub push failed, 5 stopped
on non-finite values.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from train.checkpoints import (RUN_CONFIG_FILE, STATE_FILE, TrainState, list_checkpoints, resume_from_checkpoint,
                               save_checkpoint)
from train.folders import write_json
from train.run_lock import FolderInUseError, RunLock
from train.settings import ConfigError, PretrainSettings, read_config_file

logger = logging.getLogger("train.pretrain")

EXIT_OK, EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_PUSH_FAILED, EXIT_NON_FINITE = 0, 2, 3, 4, 5
RUN_NAME = "dbeta-pretrain"

FLAGS = {  # argparse dest -> setting
    "output_dir": "output_dir", "export_dir": "export_dir", "seed": "seed",
    "dataset": "data.dataset", "mimic_root": "data.mimic_root", "n3s": "data.n3s", "num_workers": "data.num_workers",
    "size": "model.size", "text_encoder": "model.text_encoder", "tokenizer": "model.tokenizer",
    "init_from": "model.init_from",
    "max_steps": "train.max_steps", "batch_size": "train.per_device_batch_size",
    "grad_accum": "train.gradient_accumulation_steps", "mixed_precision": "train.mixed_precision",
    "save_every": "train.save_every", "eval_every": "train.eval_every",
    "lr": "optim.lr", "warmup_steps": "optim.warmup_steps",
    "push_to_hub": "hub.push_to_hub",
}


class NonFiniteError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.pretrain",
        description="D-BETA pretraining with Accelerate (see the module docstring for outputs and exit codes).",
        epilog="Exit codes: 0 finished, 2 bad settings or folder in use, 3 stopped by SIGINT/SIGTERM after saving a "
               "checkpoint (rerun with --resume), 4 exported but the Hub push failed, 5 non-finite loss/gradient.",
    )
    p.add_argument("--config", help="YAML or JSON settings file (see --print-config for every setting)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set optim.lr=1e-4 --set model.overrides.ets_mode=learnable")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings with help, then exit")
    p.add_argument("--output-dir")
    p.add_argument("--export-dir", help="folder for the exported model (default: OUTPUT/model)")
    p.add_argument("--seed", type=int)
    p.add_argument("--dataset", help="prepared dataset folder (save_to_disk DatasetDict with train/validation)")
    p.add_argument("--mimic-root", help="instead of --dataset: train straight from an unmodified MIMIC-IV-ECG v1.0 "
                                        "folder (records read on demand; see README)")
    p.add_argument("--n3s", help="N3S table folder")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--size", choices=("full", "small"))
    p.add_argument("--text-encoder", help="Hub id or folder of the text encoder to start from (weights+tokenizer)")
    p.add_argument("--tokenizer")
    p.add_argument("--init-from", help="a saved D-BETA folder to continue pretraining from")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, help="per-process micro-batch")
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--bf16", dest="mixed_precision", action="store_const", const="bf16")
    p.add_argument("--no-bf16", dest="mixed_precision", action="store_const", const="no")
    p.add_argument("--save-every", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in OUTPUT")
    p.add_argument("--export-only", metavar="CHECKPOINT", help="export this checkpoint folder and exit")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="push the export to this Hub repo")
    return p


def resolve_settings(argv=None) -> tuple:
    """(PretrainSettings, argparse namespace): defaults < config file < --set < flags, validated."""
    args = build_parser().parse_args(argv)
    settings = PretrainSettings()
    config_path = args.config
    if config_path is None and args.export_only and (Path(args.export_only) / RUN_CONFIG_FILE).is_file():
        config_path = str(Path(args.export_only) / RUN_CONFIG_FILE)
    if config_path is not None:
        settings.update(read_config_file(config_path))
        if config_path != args.config:  # a checkpoint's own run config: its export folder was that run's
            settings.export_dir = None
    settings.apply_sets(args.sets)
    settings.apply_flags(args, FLAGS)
    settings.validate(model_files=not args.export_only)  # an export reads the checkpoint's config, not model.config
    return settings, args


def main(argv=None) -> int:
    try:
        settings, args = resolve_settings(argv)
        if args.print_config:
            print(settings.to_yaml(), end="")
            return EXIT_OK
        if not args.export_only and not settings.data.dataset and not settings.data.mimic_root:
            raise ConfigError("data.dataset (--dataset) or data.mimic_root (--mimic-root) is required")
        if not args.export_only and settings.data.dataset and settings.data.mimic_root:
            raise ConfigError(f"give data.dataset ({settings.data.dataset}) or data.mimic_root "
                              f"({settings.data.mimic_root}), not both")
        from train.export import ExportTargetError, check_export_target, check_run_folder
        from train.run_report import export_dir_of

        try:  # before the first step, not after the last one
            check_run_folder(settings.output_dir, reads=(settings.model.init_from,))
            check_export_target(export_dir_of(settings), protect=(settings.output_dir, settings.model.init_from,
                                                                  args.export_only))
        except ExportTargetError as err:
            raise ConfigError(str(err)) from None
        # One output folder, one run: the first process of a launch holds the lock for all of them.
        is_first = os.environ.get("RANK", "0") == "0"
        with RunLock(settings.output_dir) if is_first else contextlib.nullcontext():
            if not args.export_only:
                check_output_folder(Path(settings.output_dir), args.resume)
            if args.export_only:
                logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
                logger.setLevel(logging.INFO)
                return export_checkpoint(settings, args.export_only)
            return train(settings, resume=args.resume)
    except (ConfigError, FileNotFoundError, FolderInUseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NON_FINITE


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def check_output_folder(out: Path, resume: bool) -> None:
    """Refuse a run that would replace another run's record: its checkpoints (without --resume), or its export and
    metrics when the checkpoints are gone (deleted to save disk after the export), which nothing can resume."""
    if list_checkpoints(out):
        if not resume:
            raise ConfigError(f"{out / 'checkpoints'} already holds checkpoints: pass --resume, or use another "
                              "--output-dir")
        return
    finished = [name for name in ("model", "metrics.json") if (out / name).exists()]
    if finished == ["metrics.json"] and _metrics_status(out) == "non-finite":
        return  # a run stopped before its first checkpoint: nothing of it to keep
    if finished:
        raise ConfigError(f"{out} holds a finished run ({', '.join(finished)}, {RUN_CONFIG_FILE}) and no checkpoint"
                          f"{' to resume from' if resume else ''}: a new run would replace them. Use another "
                          "--output-dir, or move them away first")


def train(s: PretrainSettings, resume: bool) -> int:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from train.collator import MODEL_INPUTS
    from train.export import build_processor
    from train.model_setup import build_model_and_tokenizer, frozen_text_dtype, public_name
    from train.optim import build_optimizer, build_scheduler
    from train.pretrain_data import build_collators, negative_samplers, select_splits, train_loader
    from train.run_report import export_and_push, write_metrics
    from train.signals import (StopFlag, follow_parent_death, launched_by_a_launcher,
                               processes_requested_from_launcher, tolerate_closed_output)
    from train.validation import LOSS_KEYS, evaluate

    t, o, d = s.train, s.optim, s.data
    out = Path(s.output_dir).resolve()
    if launched_by_a_launcher():
        follow_parent_death()
        tolerate_closed_output()
    # 1. Accelerator. On a machine without a GPU, cpu=True is required: with cpu=False, accelerate 1.15 under
    # `accelerate launch --multi_gpu` reports one process on every rank while torch.distributed is initialised.
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision, cpu=t.cpu or not _has_accelerator(),
        log_with=list(t.log_with) + [_console_tracker()],
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() != world:
        raise RuntimeError(f"torch.distributed has {torch.distributed.get_world_size()} processes but accelerate "
                           f"sees {world} ({accelerator.distributed_type}); refusing to train with a broken setup")
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    requested = processes_requested_from_launcher() if launched_by_a_launcher() else None
    if requested and requested > world:
        logger.warning("accelerate launch was asked for %d processes but started %d: with --cpu, accelerate 1.15 "
                       "runs one process; on a machine without a GPU use `accelerate launch --multi_gpu "
                       "--num_processes %d` (DDP over gloo)", requested, world, requested)
    set_seed(s.seed)

    # 2. Model, data, optimizer.
    model, tokenizer, text_init = build_model_and_tokenizer(s.model)
    text_dtype = None
    if s.model.freeze_text_encoder:
        top = s.model.text_trainable_layers
        text_dtype = None if top else frozen_text_dtype(s.model.frozen_text_precision)
        try:
            model.freeze_text_encoder(compute_dtype=text_dtype, trainable_layers=top)
        except ValueError as err:
            raise ConfigError(f"model.text_trainable_layers: {err}") from err
        logger.info("text encoder frozen%s; it computes in %s", f" but for its top {top} layers" if top else "",
                    "bf16 (autocast)" if text_dtype else "fp32")
    train_rows, val_rows, split_reports = select_splits(d)
    train_sampler, val_sampler, negatives = negative_samplers(d.n3s, train_rows, val_rows, split_reports)
    n3s_table = n3s_identity(d.n3s)
    identity = {"tokenizer": tokenizer_identity(tokenizer), "data_identity": dataset_identity(d),
                "paths": resolved_paths(s)}
    train_collator, val_collator = build_collators(build_processor(tokenizer), s.collator, d.max_length, s.seed,
                                                   train_sampler, val_sampler)
    optimizer = build_optimizer(model, o.lr, o.weight_decay, o.betas, o.eps, o.fused, o.text_lr_ratio)
    # Not prepared: accelerate would step a prepared scheduler once per process.
    scheduler = build_scheduler(optimizer, o.warmup_steps, t.max_steps, o.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]

    # 3. Resume.
    state = TrainState()
    if resume:
        path = resume_from_checkpoint(accelerator, out, state, scheduler, check=lambda checkpoint, saved: (
            check_same_run(checkpoint, s, saved, len(train_rows), n3s_table, identity)))
        if path is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", out / "checkpoints")
        else:
            saved_world = json.loads((path / STATE_FILE).read_text()).get("world_size", world)
            if saved_world != world:
                logger.warning("resuming a %s-process run with %s processes: the data order is not an exact "
                               "continuation", saved_world, world)
            logger.info("resumed from %s at step %d", path, state.step)
    state.train_rows, state.n3s_table = len(train_rows), n3s_table
    state.tokenizer, state.data_identity, state.paths = (identity["tokenizer"], identity["data_identity"],
                                                         identity["paths"])
    if accelerator.is_main_process:  # after the resume checks: a refused resume leaves the run's record as it was
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RUN_CONFIG_FILE, s.to_dict())

    bs, ga = t.per_device_batch_size, t.gradient_accumulation_steps
    global_batch = bs * world * ga
    loader, sampler = train_loader(train_rows, train_collator, bs, s.seed, rank, world, state.micro_batches,
                                   d.num_workers)
    info = {"text_init": text_init, "text_compute": "bf16 autocast" if text_dtype is not None else "fp32",
            "negatives": "N3S table" if d.n3s else negatives, "world_size": world, "global_batch": global_batch,
            "distributed_type": str(accelerator.distributed_type.value),
            "data": f"{public_name(d.dataset or d.mimic_root)} ({len(train_rows)} train / "
                    f"{len(val_rows) if val_rows is not None else 0} validation rows)"}
    accelerator.init_trackers(RUN_NAME, config=_flatten(s.to_dict()))
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    logger.info("D-BETA (%s): %.2fM parameters; %d process(es) [%s] x batch %d x accumulation %d = global batch "
                "%d; precision %s; negatives: %s", s.model.config or s.model.size, n_params / 1e6, world,
                accelerator.distributed_type.value, bs, ga, global_batch, t.mixed_precision, negatives)

    def validate(step: int) -> None:
        if val_rows is None:
            return
        state.validation = evaluate(accelerator, model, val_rows, val_collator, t.eval_batch_size or bs, s.seed)
        state.history.append({"step": step, "validation": dict(state.validation)})
        accelerator.log({f"val/{k}": v for k, v in state.validation.items()}, step=step)

    def checkpoint() -> None:
        window_mean = accelerator.reduce(window.clone(), reduction="mean") if world > 1 else window
        state.loss_window = {"sum": window_mean.tolist(), "steps": window_steps}
        save_checkpoint(accelerator, model, scheduler, state, s.to_dict(), t.checkpoint_total_limit,
                        accelerator.unwrap_model(model).config, tokenizer)

    # 4. The loop: one optimizer step per iteration, ga micro-batches each.
    stop = StopFlag().install()
    bar = tqdm(total=t.max_steps, initial=state.step, disable=not accelerator.is_main_process, dynamic_ncols=True,
               desc="pretrain")
    window = torch.zeros(len(LOSS_KEYS), device=accelerator.device)  # summed on the device: no sync per step
    window_steps, window_start, run_start, run_samples = 0, time.perf_counter(), time.perf_counter(), 0
    restarted_window = resume and state.loss_window is None and state.step % t.log_every != 0
    if state.loss_window:  # the steps since the last log before the stop count in the next logged means
        window += torch.tensor(state.loss_window["sum"], device=accelerator.device)
        window_steps = state.loss_window["steps"]
    elif restarted_window:
        logger.warning("the checkpoint predates saved training-loss windows: the losses logged at the next log "
                       "step average only the steps after this resume (recorded in its history entry)")
    timed_steps = 0  # steps of the window this process ran since window_start (train/samples_per_s)
    outcome = "finished"
    if t.eval_at_start and state.step == 0:
        validate(0)
    data_iter = iter(loader)
    model.train()
    try:
        while state.step < t.max_steps:
            step_losses = torch.zeros_like(window)
            for j in range(ga):
                batch = next(data_iter)
                torch.manual_seed(_micro_seed(s.seed, rank, state.micro_batches))
                inputs = {k: batch[k].to(accelerator.device) for k in MODEL_INPUTS}
                with contextlib.nullcontext() if j == ga - 1 else accelerator.no_sync(model):
                    output = model(**inputs)
                    accelerator.backward(output.loss / ga)
                step_losses += torch.stack([getattr(output, k).detach().float() for k in LOSS_KEYS]) / ga
                state.micro_batches += 1
            grad_norm = accelerator.clip_grad_norm_(params, o.max_grad_norm or float("inf"))
            finite = torch.isfinite(step_losses).all() & torch.isfinite(grad_norm)
            # One collective per step: every process takes the same decisions (skip, stop) at the same step.
            flags = torch.stack([(~finite).float(), torch.tensor(float(stop.signum is not None),
                                                                 device=accelerator.device)])
            bad, wants_stop = (accelerator.reduce(flags, "sum") if world > 1 else flags).tolist()
            if bad:
                optimizer.zero_grad(set_to_none=True)
                state.bad_steps += 1
                logger.warning("step %d: non-finite loss or gradient norm (%s); step skipped (%d of %d allowed)",
                               state.step + 1, ", ".join(f"{k}={v:.4g}" for k, v in
                                                         zip(LOSS_KEYS, step_losses.tolist())),
                               state.bad_steps, t.max_bad_steps)
                if state.bad_steps > t.max_bad_steps:
                    outcome = "non-finite"
                    break
            else:
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.samples += global_batch
                run_samples += global_batch
                window += step_losses
                window_steps += 1
                timed_steps += 1
                bar.update(1)
            final = state.step == t.max_steps

            if window_steps and (state.step % t.log_every == 0 or final):
                means = accelerator.reduce(window / window_steps, reduction="mean")
                state.train_losses = dict(zip(LOSS_KEYS, means.tolist()))
                state.history.append({"step": state.step, "train": dict(state.train_losses)})
                if restarted_window:
                    state.history[-1]["averaged_steps"] = window_steps
                    restarted_window = False
                elapsed = time.perf_counter() - window_start
                logs = {f"train/{k}": v for k, v in state.train_losses.items()}
                logs.update({"train/lr": float(scheduler.get_last_lr()[0]),
                             "train/grad_norm": float(grad_norm),
                             "train/samples_per_s": timed_steps * global_batch / max(elapsed, 1e-9),
                             "train/epoch": sampler.epoch_of(state.micro_batches * world)})
                accelerator.log(logs, step=state.step)
                bar.set_postfix(loss=f"{state.train_losses['loss']:.3f}")
                window.zero_()
                window_steps, timed_steps, window_start = 0, 0, time.perf_counter()

            paused = time.perf_counter()  # validation and checkpoints are left out of train/samples_per_s
            if not bad and ((t.eval_every and state.step % t.eval_every == 0) or final):
                validate(state.step)
            if (not bad and t.save_every and state.step % t.save_every == 0) or final or wants_stop:
                checkpoint()
            window_start += time.perf_counter() - paused
            if wants_stop and not final:
                outcome = "interrupted"
                break
    finally:
        # The DataLoader workers first: they ignore SIGTERM, so if this process left them running on an error,
        # multiprocessing's exit handler (terminate, then join) would wait for them forever.
        del data_iter
        stop.restore()
        bar.close()

    # 5. The end: export, or say why not.
    elapsed = time.perf_counter() - run_start
    info.update(elapsed_s=round(elapsed, 2), samples_per_s=round(run_samples / max(elapsed, 1e-9), 3))
    if outcome != "finished":
        newest = list_checkpoints(out)
        if accelerator.is_main_process:
            write_metrics(out, {"status": outcome, "steps": state.step, "skipped_steps": state.bad_steps,
                                "train": state.train_losses, "validation": state.validation,
                                "checkpoint": str(newest[0]) if newest else None, "elapsed_s": info["elapsed_s"]})
        accelerator.end_training()
        if outcome == "non-finite":
            raise NonFiniteError(
                f"step {state.step + 1}: non-finite loss or gradient after {state.bad_steps} skipped step(s) "
                f"(train.max_bad_steps={t.max_bad_steps}); nothing exported. The last good checkpoint is "
                f"{newest[0] if newest else 'none'}; lower optim.lr, or resume with --resume after a fix")
        logger.warning("stopped at step %d; checkpoint saved. Continue with --resume.", state.step)
        return EXIT_INTERRUPTED
    accelerator.wait_for_everyone()
    metrics = export_and_push(accelerator.unwrap_model(model), tokenizer, s, state, info, accelerator)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return EXIT_PUSH_FAILED if metrics["push"] and not metrics["push"]["ok"] else EXIT_OK


# ----------------------------------------------------------------------------------------------------------------
# Export of a saved checkpoint
# ----------------------------------------------------------------------------------------------------------------


# What a resume continues: which rows are trained on and in what order (other values would continue from the saved
# position in a different stream), the model's shape (weights of 4 heads read as 2), and the optimisation (the
# restored schedule keeps its own LR and length: a new max_steps ran its extra steps at LR 0).
RESUME_SETTINGS = ("seed", "data.dataset", "data.mimic_root", "data.train_split", "data.max_train_samples",
                   "data.val_fraction", "data.split_seed", "data.max_length", "model.size", "model.config",
                   "model.overrides", "model.freeze_text_encoder", "model.text_trainable_layers",
                   "model.text_encoder_weights", "model.text_encoder", "model.tokenizer", "model.init_from", "optim",
                   "collator", "train.max_steps",
                   "train.per_device_batch_size", "train.gradient_accumulation_steps",
                   # the negatives the ETM/ETS losses see, and the arithmetic of every step
                   "data.n3s", "train.mixed_precision", "model.frozen_text_precision")


# Settings naming a local folder or file (or a Hub id): the same place spelled otherwise (`data/`, `./data`, a
# relative path) is the same setting.
PATH_SETTINGS = ("data.dataset", "data.mimic_root", "data.n3s", "model.config", "model.text_encoder",
                 "model.tokenizer", "model.init_from")


def check_same_run(checkpoint: Path, s: PretrainSettings, state: TrainState, train_rows: int,
                   n3s_table=None, identity: dict = None) -> None:
    """Refuse a resume whose data, model or optimisation settings, training split, N3S table, tokenizer or dataset
    content differ from the checkpointed run's (`identity`: {"tokenizer", "data_identity", "paths"} of this run)."""
    identity = identity or {}
    saved = _same_places(json.loads((checkpoint / RUN_CONFIG_FILE).read_text()), s, state.paths or {})
    changed = s.changed_since(saved, RESUME_SETTINGS)
    if state.tokenizer is not None and identity.get("tokenizer") not in (None, state.tokenizer):
        changed.append(f"the tokenizer of {s.model.tokenizer or s.model.init_from or s.model.text_encoder} was "
                       f"replaced (content {state.tokenizer} -> {identity['tokenizer']}: other token ids)")
    now_data = identity.get("data_identity")
    if state.data_identity is not None and now_data is not None and now_data != state.data_identity:
        changed.append(f"the data {s.data.dataset or s.data.mimic_root} was rebuilt or replaced at the same path "
                       f"({_differences(state.data_identity, now_data)})")
    if state.train_rows is not None and state.train_rows != train_rows:
        changed.append(f"training rows: {state.train_rows} -> {train_rows} (the data changed)")
    if state.n3s_table is not None and n3s_table is not None and state.n3s_table != n3s_table:
        changed.append(f"the N3S table {s.data.n3s} was rebuilt ({_differences(state.n3s_table, n3s_table)})")
    if changed:
        raise ConfigError(f"--resume from {checkpoint}: the settings differ from the checkpointed run's ("
                          + "; ".join(changed) + "); a resume continues that run exactly. Restore them, or start a "
                          "new run in another --output-dir (--init-from an export of this one keeps its weights)")


def export_checkpoint(s: PretrainSettings, checkpoint: str) -> int:
    from safetensors.torch import load_model

    from train.checkpoints import verify_checkpoint
    from train.model_setup import build_model_and_tokenizer, public_name
    from train.run_report import export_and_push

    path = Path(checkpoint)
    if not (path / "model.safetensors").is_file():
        raise ConfigError(f"{path} has no model.safetensors (expected an OUTPUT/checkpoints/checkpoint_N folder)")
    try:
        verify_checkpoint(path)
    except RuntimeError as err:
        raise ConfigError(f"cannot export {path}: {err}") from None
    Path(s.output_dir).mkdir(parents=True, exist_ok=True)
    if (path / "config.json").is_file() and (path / "tokenizer").is_dir():  # written by save_checkpoint
        from transformers import AutoTokenizer

        from dbeta.configuration_dbeta import DBetaConfig
        from dbeta.modeling_dbeta import DBetaForPreTraining

        with _damaged(path / "config.json"):
            model = DBetaForPreTraining(DBetaConfig.from_json_file(str(path / "config.json")))
        with _damaged(path / "tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    else:  # rebuild the architecture from the run's settings
        shape_only = PretrainSettings.from_dict(dict(s.to_dict(), model=dict(s.to_dict()["model"],
                                                                              text_encoder_weights=False)))
        model, tokenizer, _ = build_model_and_tokenizer(shape_only.model)
    with _damaged(path / "model.safetensors", "does not match config.json"):
        load_model(model, str(path / "model.safetensors"))
    # The check from_pretrained runs: settings that change no weight's shape (a head count) are recorded in the
    # weights' `geometry` buffers; an export whose config.json differs from them would be published, then refused.
    wrong = model._geometry_mismatches() if hasattr(model, "_geometry_mismatches") else []
    if wrong:
        raise ConfigError(f"cannot export: {path / 'config.json'} does not match {path / 'model.safetensors'} ("
                          + "; ".join(wrong) + "): from_pretrained would refuse the export. Restore the "
                          "checkpoint's config.json; nothing was exported")
    state = TrainState()
    saved = json.loads((path / STATE_FILE).read_text())
    state.load_state_dict(saved)
    world = saved.get("world_size", 1)
    info = {"text_init": public_name(s.model.text_encoder), "world_size": world,
            "global_batch": s.train.per_device_batch_size * world * s.train.gradient_accumulation_steps,
            "data": public_name(s.data.dataset or s.data.mimic_root)}
    metrics = export_and_push(model.eval(), tokenizer, s, state, info, status="exported")
    return EXIT_PUSH_FAILED if metrics["push"] and not metrics["push"]["ok"] else EXIT_OK


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _damaged(path: Path, what: str = "is damaged"):
    """--export-only: a checkpoint file that does not load ends the run with exit 2 naming it, not a traceback."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - json, tokenizers, transformers and safetensors each raise their own
        raise ConfigError(f"cannot export: {path} {what} ({type(err).__name__}: {str(err)[:300]})") from None


def n3s_identity(folder):
    """What tells an N3S table from another one built at the same path: its meta.json (build times, counts) and
    its files' sizes. None without a table."""
    if not folder:
        return None
    import hashlib

    folder = Path(folder)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    return dict(files, **{"meta.json sha256": hashlib.sha256((folder / "meta.json").read_bytes()).hexdigest()[:16]})


def tokenizer_identity(tokenizer) -> str:
    """A hash of what the tokenizer does (its tokenizer.json content: vocabulary, merges, normalizer; else its
    vocabulary) and its special tokens: another tokenizer saved in the same folder gives other token ids."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # set per call, not part of what the tokenizer is
        spec.pop("padding", None)
    else:
        spec = {"vocab": sorted(tokenizer.get_vocab().items())}
    spec["special_tokens"] = sorted(str(t) for t in tokenizer.all_special_tokens)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dataset_identity(d) -> dict:
    """What tells a prepared dataset from another one written at the same path: each split's `_fingerprint`
    (state.json) and data file bytes; for data.mimic_root, the sizes of its two CSVs. {} when none is readable."""
    if d.mimic_root:
        root = Path(d.mimic_root)
        return {name: (root / name).stat().st_size for name in ("record_list.csv", "machine_measurements.csv")
                if (root / name).is_file()}
    p = Path(d.dataset)
    folder = p if (p / "dataset_dict.json").is_file() else p / "dataset"
    found = {}
    for split in sorted(folder.iterdir()) if folder.is_dir() else ():
        try:
            state = json.loads((split / "state.json").read_text())
            size = sum((split / f["filename"]).stat().st_size for f in state.get("_data_files", []))
        except (OSError, ValueError, TypeError, KeyError):
            continue
        found[split.name] = f"fingerprint {state.get('_fingerprint')}, {size} bytes"
    return found


def resolved_paths(s: PretrainSettings) -> dict:
    """The resolved folder of each PATH_SETTINGS value that is a local path (a Hub id is left out)."""
    now = s.to_dict()
    return {key: resolved for key in PATH_SETTINGS if (resolved := _resolved(_get(now, key))) is not None}


def _same_places(saved: dict, s: PretrainSettings, saved_paths: dict) -> dict:
    """`saved` (a run config) with each path setting spelled as now when both name the same place (the run's
    resolved path, recorded in its train state; for older checkpoints the saved spelling resolved from here)."""
    import copy

    saved, now = copy.deepcopy(saved), s.to_dict()
    for key in PATH_SETTINGS:
        old, new = _get(saved, key), _get(now, key)
        if isinstance(old, str) and isinstance(new, str) and old != new:
            place = saved_paths.get(key) or _resolved(old)
            if place is not None and place == _resolved(new):
                section, name = key.split(".")
                saved[section][name] = new
    return saved


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _resolved(value):
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else None


def _differences(old: dict, new: dict) -> str:
    return ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k))


def _metrics_status(out: Path):
    try:
        return json.loads((out / "metrics.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _has_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _micro_seed(seed: int, rank: int, micro_batch: int) -> int:
    return int(np.random.SeedSequence([seed, 7, rank, micro_batch]).generate_state(1)[0])


def _flatten(d: dict, prefix: str = "") -> dict:
    """Nested settings as the flat scalar dict trackers (TensorBoard hparams) accept."""
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return flat


def _console_tracker():
    from accelerate.tracking import GeneralTracker

    class ConsoleTracker(GeneralTracker):
        """Prints each logged dict as one line (through tqdm, so the progress bar stays intact)."""

        name = "console"
        requires_logging_directory = False
        main_process_only = True

        @property
        def tracker(self):
            return None

        def store_init_configuration(self, values: dict):
            pass

        def log(self, values: dict, step=None, **kwargs):
            from tqdm.auto import tqdm

            parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()]
            tqdm.write(f"[step {step}] " + " ".join(parts), file=sys.stderr)

    return ConsoleTracker()


if __name__ == "__main__":
    sys.exit(main())
