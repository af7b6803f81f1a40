"""The training loop: staged iterations, logging, checkpoints, resume, periodic evaluation."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import threading
import time
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metrics as clu_metrics
from clu import parameter_overview
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from seqnet_jax import checkpoints as ckpt_lib
from seqnet_jax import progress as progress_lib
from seqnet_jax.data import build_dataset, transforms
from seqnet_jax.data.pipeline import TrainLoader
from seqnet_jax.fileio import write_text_atomic
from seqnet_jax.modeling import seqnet
from seqnet_jax.modeling.losses import LOSS_NAMES
from seqnet_jax.train_lib import steps
from seqnet_jax.train_lib.host_stages import HostStages, check_pids
from seqnet_jax.train_lib.optimizer import make_optimizer, make_schedule
from seqnet_jax.train_lib.train_state import TrainState


class NonFiniteLossError(FloatingPointError):
    """A loss term (or, at a save, a parameter) became NaN/inf; the message names it and the
    checkpoint a rerun resumes from."""


# A parameter beyond this magnitude counts as diverged (as NaN/inf) when a checkpoint is saved.
PARAM_LIMIT = 1e6


def buckets_from_config(data_cfg):
    return [tuple(b) for b in data_cfg.buckets] if len(data_cfg.buckets) else None


def num_pids_from(config, dataset) -> int:
    lut = config.model.oim.lut_size
    return int(lut) if lut > 0 else int(dataset.num_train_pids)


def make_mesh() -> Mesh:
    """A 1-D ``('data',)`` mesh over every device of every process: batch split, state
    replicated. Devices are ordered by process, so process ``p`` holds the rows ``p*b ..
    p*b+b-1`` of a global batch (``b`` = its share), the rows its loader read."""
    devices = sorted(jax.devices(), key=lambda dev: (dev.process_index, dev.id))
    return Mesh(np.asarray(devices), ("data",))


def check_batch_divides(batch_size: int) -> None:
    """The global batch must split evenly over every device (of every process)."""
    n, p = jax.device_count(), jax.process_count()
    if batch_size % n:
        where = f"{p} processes with {jax.local_device_count()} each" if p > 1 else "1 process"
        raise ValueError(
            f"data.batch_size={batch_size} (the global batch) does not divide over the {n} "
            f"devices ({where}): use a multiple of {n}"
        )


def local_rows(x) -> np.ndarray:
    """This process's rows of a batch-sharded (or replicated) device array, in global order."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    n, p = x.shape[0], jax.process_count()
    lo, hi = jax.process_index() * n // p, (jax.process_index() + 1) * n // p
    out = np.empty((hi - lo,) + x.shape[1:], x.dtype)
    filled = np.zeros(hi - lo, bool)
    for shard in x.addressable_shards:
        start, stop, _ = shard.index[0].indices(n) if shard.index else (0, n, 1)
        a, b = max(start, lo), min(stop, hi)
        if a < b:
            out[a - lo : b - lo] = np.asarray(shard.data)[a - start : b - start]
            filled[a - lo : b - lo] = True
    if not filled.all():
        raise ValueError(f"rows {lo}..{hi - 1} of a {x.shape} array are not on this process")
    return out


def init_model_variables(config, model: seqnet.SeqNet, rng) -> dict:
    """Random init, then ``init.imagenet_weights`` (stem + both res5 heads) and/or a released
    reference checkpoint (``init.reference_checkpoint``, every weight) if set."""
    variables = seqnet.init_variables(model, rng)
    if config.init.imagenet_weights:
        from seqnet_jax.weights import load_imagenet_into  # torch only needed for .pth files

        variables = load_imagenet_into(variables, config.init.imagenet_weights, config.model)
    if config.init.reference_checkpoint:
        from seqnet_jax.weights import load_reference_checkpoint

        variables = load_reference_checkpoint(variables, config.init.reference_checkpoint)
    return variables


def abstract_train_state(config, model: seqnet.SeqNet):
    """Shapes/dtypes of the train state (a restore target; no weights are loaded or computed)."""

    def build(rng):
        variables = seqnet.init_variables(model, rng)
        tx = make_optimizer(config.solver, variables["params"], 1)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables["batch_stats"],
            oim_state=variables["oim_state"],
            opt_state=tx.init(variables["params"]),
            rng=rng,
        )

    return jax.eval_shape(build, jax.random.PRNGKey(0))


def create_train_state(config, model, steps_per_epoch: int, rng, sharding=None):
    """The initial train state and optimizer. ``sharding`` (e.g. replicated over the run's mesh):
    where the state is placed; a random initialisation is then one jitted program over every
    device (several processes compile and cache it once, not each for its own device)."""
    init_rng, run_rng = jax.random.split(rng)

    def build(variables, run_rng):
        tx = make_optimizer(config.solver, variables["params"], steps_per_epoch)
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables["batch_stats"],
            oim_state=variables["oim_state"],
            opt_state=tx.init(variables["params"]),
            rng=run_rng,
        )
        return state, tx

    if sharding is None or config.init.imagenet_weights or config.init.reference_checkpoint:
        state, tx = build(init_model_variables(config, model, init_rng), run_rng)
        return (state if sharding is None else jax.device_put(state, sharding)), tx
    state = jax.jit(
        lambda r1, r2: build(seqnet.init_variables(model, r1), r2)[0], out_shardings=sharding
    )(init_rng, run_rng)
    return state, make_optimizer(config.solver, state.params, steps_per_epoch)


class Trainer:
    """Holds the jitted stages and runs one staged iteration (design.md §1)."""

    def __init__(self, config, model: seqnet.SeqNet, tx, mesh: Optional[Mesh] = None):
        self.config = config
        self.model = model
        self.mesh = mesh or make_mesh()
        self.replicated = NamedSharding(self.mesh, P())
        self.data_sharding = NamedSharding(self.mesh, P("data"))
        self.buckets = transforms.check_buckets(
            buckets_from_config(config.data)
            or transforms.default_buckets(config.data.min_size, config.data.max_size)
        )
        self.host = HostStages(config.model, config.seed, config.data.num_workers)
        self.propose = jax.jit(
            functools.partial(
                steps.propose_train, model, pre_nms_top_n=config.model.rpn.pre_nms_topn_train
            )
        )
        self.first_stage = jax.jit(functools.partial(steps.first_stage_train, model))
        self.train_step = steps.make_jitted_train_step(
            model, tx, steps.loss_weights(config.solver), self.replicated
        )
        self.timings: Dict[str, list] = {}

    def num_compilations(self) -> int:
        return int(sum(f._cache_size() for f in (self.propose, self.first_stage, self.train_step)))

    def shard(self, tree):
        """This process's rows → batch-sharded global arrays (all rows with one process)."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.data_sharding)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.data_sharding, np.asarray(x)),
            tree,
        )

    def global_batch(self, batch: dict) -> dict:
        """Several processes: every process's image sizes (``global_image_sizes``, for the host's
        canvas of the whole batch) and the images padded into the bucket the global batch needs
        (the loader already chose it when the annotations know every size). One process: as is."""
        if jax.process_count() == 1:
            return batch
        from seqnet_jax import distributed as dist

        # one small collective per step: (local rows, 2) int32 from every process
        sizes = dist.allgather(np.asarray(batch["image_sizes"], np.int32)).reshape(-1, 2)
        hb, wb = transforms.choose_bucket([tuple(int(v) for v in s) for s in sizes], self.buckets)
        images = batch["images"]
        if images.shape[1:3] != (hb, wb):  # cut or pad the zero border (images fit the bucket)
            fitted = np.zeros(images.shape[:1] + (hb, wb) + images.shape[3:], images.dtype)
            h, w = min(hb, images.shape[1]), min(wb, images.shape[2])
            fitted[:, :h, :w] = images[:, :h, :w]
            images = fitted
        return {**batch, "images": images, "global_image_sizes": sizes}

    def _t(self, name, t0):
        t = time.perf_counter()
        self.timings.setdefault(name, []).append(t - t0)
        return t

    def iteration(self, state: TrainState, batch: dict):
        """Propose → NMS → sample → first stage → sample → train step."""
        step = int(state.step)
        t = t_start = time.perf_counter()
        batch = self.global_batch(batch)
        dev = self.shard({"images": batch["images"], "image_sizes": batch["image_sizes"]})
        variables = state.variables
        boxes, scores, cache = self.propose(variables, dev["images"], dev["image_sizes"])
        feat_hw = cache["feat"].shape[1:3]
        rpn_t = self.host.rpn_targets(batch, step, feat_hw)
        boxes, scores = local_rows(boxes), local_rows(scores)
        t = self._t("device_propose", t)
        props, pvalid = self.host.proposals(boxes, scores)
        s1 = self.host.roi_targets(props, pvalid, batch, step, stage=1)
        t = self._t("host_nms_sample1", t)
        s1_dev = self.shard(device_targets(s1))  # sent once: used by stage 1 and the step
        refined, cache = self.first_stage(
            variables, cache, s1_dev["boxes"], s1_dev["valid"], dev["image_sizes"]
        )
        refined = local_rows(refined)
        t = self._t("device_stage1", t)
        s2 = self.host.roi_targets(refined, s1["valid"], batch, step, stage=2)
        t = self._t("host_sample2", t)
        state, metrics = self.train_step(
            state, self.shard(rpn_t), s1_dev, self.shard(device_targets(s2)), cache
        )
        metrics = jax.device_get(metrics)
        self._t("device_train_step", t)
        self._t("iteration", t_start)
        return state, metrics


def device_targets(samples: dict) -> dict:
    """The sampled-RoI arrays the device stages read (host-only bookkeeping stays behind)."""
    return {k: samples[k] for k in ("boxes", "pids", "targets", "valid")}


def check_finite(metrics: dict, step: int, kept: Optional[Callable[[], str]] = None) -> None:
    """``NonFiniteLossError`` naming the first NaN/inf loss term; ``kept()`` (called only then)
    says which checkpoint a rerun resumes from."""
    for k in LOSS_NAMES + ("loss",):
        v = float(metrics[k])
        if not math.isfinite(v):
            note = kept() if kept is not None else "the last checkpoint is intact"
            raise NonFiniteLossError(
                f"non-finite {k} = {v} at step {step} (losses: "
                f"{ {n: float(metrics[n]) for n in LOSS_NAMES} }); training stopped without "
                f"saving this state. {note}"
            )


@jax.jit
def _params_within_limit(params):
    """Per parameter array (in ``tree_leaves`` order): every value finite and ``<= PARAM_LIMIT``
    in magnitude."""
    leaves = jax.tree.leaves(params)
    return jnp.stack([jnp.all(jnp.isfinite(x) & (jnp.abs(x) <= PARAM_LIMIT)) for x in leaves])


def diverged_params(params, limit: int = 3) -> list:
    """Names (``a/b/kernel``) of up to ``limit`` parameter arrays holding NaN, inf or values
    beyond :data:`PARAM_LIMIT`; empty when every one is sane."""
    ok = _params_within_limit(params)
    ok = np.asarray(ok.addressable_data(0) if hasattr(ok, "addressable_data") else ok)
    if ok.all():
        return []
    paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    names = ["/".join(str(getattr(k, "key", k)) for k in paths[i]) for i in np.flatnonzero(~ok)]
    return names[:limit] + ([f"... ({len(names)} arrays)"] if len(names) > limit else [])


class DeferInterrupt:
    """``with DeferInterrupt(enabled):`` a Ctrl-C (SIGINT) inside the block is held: it only sets
    :attr:`pending`, and :meth:`raise_pending` (called where stopping is safe, e.g. once the
    step is logged) raises it as ``KeyboardInterrupt`` through the handler installed before. A
    training step donates its input state, so a step stopped half way leaves no consistent state
    to save; a checkpoint save stopped half way leaves a partial folder. A second Ctrl-C inside
    the block raises at once. Only in the main thread, only when ``enabled`` (one process:
    several are stopped by the launcher's SIGINT at once)."""

    def __init__(self, enabled: bool = True, what: str = "the current step"):
        self.enabled, self.what = enabled, what
        self.pending = False
        self._previous = None
        self._handler = None  # the handler raise_pending calls

    def __enter__(self) -> "DeferInterrupt":
        self._previous = None
        if self.enabled and threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if callable(previous):  # not SIG_IGN / SIG_DFL / set outside Python
                self._previous = self._handler = previous
                signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.pending:  # a second Ctrl-C: stop at once
            self._previous(signum, frame)
            return
        self.pending = True
        logging.warning(
            "Ctrl-C: stopping once %s is done (press Ctrl-C again to stop at once)", self.what
        )

    def __exit__(self, exc_type, exc, tb) -> bool:
        previous, self._previous = self._previous, None
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        return False

    def raise_pending(self) -> None:
        """A held Ctrl-C now: the handler's ``KeyboardInterrupt`` (the default handler's)."""
        if self.pending:
            self.pending = False
            (self._handler or signal.default_int_handler)(signal.SIGINT, None)


# The metrics averaged over the steps between two log lines (clu.metrics; computed on the host
# CPU, so the accelerator runs nothing but the training stages).
LOGGED_METRICS = LOSS_NAMES + ("loss", "grad_norm")
TrainMetrics = clu_metrics.Collection.create(
    **{k: clu_metrics.Average.from_output(k) for k in LOGGED_METRICS}
)


@jax.jit
def _merge_metrics(acc, metrics):
    return acc.merge(TrainMetrics.single_from_model_output(**metrics))


class MetricWindow:
    """Means of :data:`LOGGED_METRICS` over the steps added since the last :meth:`pop`."""

    def __init__(self):
        self._cpu = jax.local_devices(backend="cpu")[0]
        self._acc = None

    def add(self, metrics: dict) -> None:
        with jax.default_device(self._cpu):
            acc = TrainMetrics.empty() if self._acc is None else self._acc
            self._acc = _merge_metrics(acc, {k: metrics[k] for k in LOGGED_METRICS})

    def pop(self) -> dict:
        """``{name: mean}`` of the window, which then starts again empty."""
        with jax.default_device(self._cpu):
            out = {k: float(v) for k, v in jax.device_get(self._acc.compute()).items()}
        self._acc = None
        return out


PARAMETERS_FILE = "parameters.txt"


def write_parameter_overview(workdir: str, params) -> str:
    """clu's table of ``params`` (name, shape, size, mean, std; total count and bytes): logged,
    and written to ``WORKDIR/parameters.txt``. Returns the table."""
    table = parameter_overview.get_parameter_overview(params)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, PARAMETERS_FILE), "w") as f:
            f.write(table + "\n")
    lines = table.split("\n")
    for i in range(0, len(lines), 80):  # as clu's log_parameter_overview: bounded log records
        logging.info("parameters (%s):\n%s", PARAMETERS_FILE, "\n".join(lines[i : i + 80]))
    return table


class MetricWriter:
    """Console + TensorBoard (tensorboardX, no TensorFlow needed)."""

    def __init__(self, logdir: str):
        self.writer = None
        if jax.process_index() != 0:  # TensorBoard comes from process 0
            return
        try:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(logdir)
        except ImportError:  # pragma: no cover
            logging.warning("tensorboardX not installed: no TensorBoard event files")

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, float(v), step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def check_checkpoint_fits(ckpt, state, workdir: str, config) -> None:
    """Before resuming: the latest checkpoint's arrays must fit the model the config builds, else
    ``CheckpointMismatchError`` naming the arrays and the config fields that differ (from the
    workdir's ``config.json``)."""
    from seqnet_jax import model_loading

    step = ckpt.latest_step()
    stored = dict(ckpt.state_metadata(step))
    model_loading.check_variables_fit(
        stored,
        {"params": state.params, "batch_stats": state.batch_stats},
        ckpt.step_directory(step),
        model_loading.trained_config_diff(workdir, config),
    )


def write_config(workdir: str, config) -> None:
    """``WORKDIR/config.json`` = the config of this run. A different earlier one (another run
    resumed with changed settings) is kept as ``config_history/<UTC time>.json``."""
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2)
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if old == text:
            return
        hist = os.path.join(workdir, "config_history")
        os.makedirs(hist, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(os.path.getmtime(path)))
        with open(os.path.join(hist, f"{stamp}.json"), "w") as f:
            f.write(old)
    write_text_atomic(path, text)


def train_and_evaluate(config, workdir: str) -> dict:
    """Train per ``config`` (resuming from the latest checkpoint in ``workdir``), evaluating every
    ``eval.period`` epochs and after the last. Returns the last evaluation results (or {}).

    Stops (README "Interrupting and resuming"): Ctrl-C lets the current step finish and saves it
    (one process); any other exception saves the last completed step when it can, then
    re-raises; a non-finite loss or a save of diverged parameters raises
    ``NonFiniteLossError`` naming the checkpoint kept. A resumed run first runs an evaluation
    that is due at its step but has no ``results.json`` (e.g. it was interrupted); a finished
    run says so."""
    from seqnet_jax import evaluate as eval_lib

    os.makedirs(workdir, exist_ok=True)
    d = config.data
    check_batch_divides(d.batch_size)  # before any work
    dataset = build_dataset(config)
    num_pids = num_pids_from(config, dataset)
    model = seqnet.build_model(config.model, num_pids)
    loader = TrainLoader(
        dataset.train,
        functools.partial(dataset.load_image, "train"),
        batch_size=d.batch_size,
        min_size=d.min_size,
        max_size=d.max_size,
        buckets=buckets_from_config(d),
        max_boxes=d.max_boxes,
        seed=config.seed,
        flip_prob=d.flip_prob,
        num_workers=d.num_workers,
        group_by_aspect_ratio=d.group_by_aspect_ratio,
        process_index=jax.process_index(),  # each process loads its rows of every batch
        process_count=jax.process_count(),
        skip_bad_images=bool(d.skip_bad_images),
    )
    spe = loader.num_batches_per_epoch
    mesh = make_mesh()
    # Replicated over every device of every process before a restore, so orbax restores into
    # the run's shardings whatever number of processes wrote the checkpoint.
    state, tx = create_train_state(
        config, model, spe, jax.random.PRNGKey(config.seed), NamedSharding(mesh, P())
    )
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    if ckpt.latest_step() is not None:
        check_checkpoint_fits(ckpt, state, workdir, config)
        state, meta, step = ckpt.restore(state)
        loader.load_state_dict(meta["loader"])
        logging.info(
            "resumed from step %d (epoch %d, batch %d)",
            step,
            loader.epoch,
            loader.state_dict()["position"],
        )
    if jax.process_index() == 0:
        write_config(workdir, config)  # only now: the run is valid (dataset, model, checkpoint)
    trainer = Trainer(config, model, tx, mesh)
    state = jax.device_put(state, trainer.replicated)
    total_steps = spe * config.solver.max_epochs
    if config.solver.max_steps > 0:
        total_steps = min(total_steps, config.solver.max_steps)
    schedule = make_schedule(config.solver, spe)
    writer = MetricWriter(os.path.join(workdir, "tensorboard"))
    logging.info(
        "model: %s, %d train images, %d steps/epoch, %d steps in total, %d ids",
        f"ResNet-{config.model.backbone.depth}",
        loader.num_images,
        spe,
        total_steps,
        num_pids,
    )
    write_parameter_overview(workdir, state.params)
    results: dict = {}
    single = jax.process_count() == 1
    # The loader position after the last completed (trained) step: the loader has already moved
    # on while a step is trained, so a checkpoint must not take loader.state_dict() then.
    done_loader = loader.state_dict()
    evaluating: Optional[int] = None  # the step whose evaluation is running

    def save(step):
        if ckpt.latest_step() == step:  # e.g. checkpoint_every_steps hit the epoch's end
            return
        bad = diverged_params(state.params)
        if bad:  # a checkpoint is what a rerun resumes from: never one of a diverged state
            raise NonFiniteLossError(
                f"parameters with NaN/inf or |x| > {PARAM_LIMIT:g} at step {step} "
                f"({', '.join(bad)}): not saved, training stopped. {kept_checkpoint()}"
            )
        ckpt.save(step, state, {"loader": done_loader, "step": int(step), "num_pids": num_pids})
        logging.info("saved checkpoint at step %d", step)

    def kept_checkpoint() -> str:
        """Which checkpoint a rerun resumes from, its parameters checked."""
        saved = sorted(ckpt.all_steps(), reverse=True)
        if not saved:
            return "No checkpoint was saved: a rerun starts from scratch."
        target = abstract_train_state(config, model)
        diverged, good = [], None
        for s in saved:
            bad = diverged_params(ckpt.restore(target, s)[0].params)
            if not bad:
                good = s
                break
            diverged.append(f"{s} ({', '.join(bad)})")
        if not diverged:
            return (
                f"The last checkpoint, step {good} ({ckpt.step_directory(good)}), has finite "
                "parameters: a rerun resumes from it (e.g. with a lower solver.base_lr)."
            )
        left = (
            f"step {good} is the last one with finite parameters"
            if good is not None
            else "no checkpoint has finite ones: delete the folder to start from scratch"
        )
        return (
            f"The checkpoint(s) of step {'; '.join(diverged)} already hold diverged parameters "
            f"(NaN/inf or |x| > {PARAM_LIMIT:g}), and a rerun would resume from them: delete "
            f"them from {ckpt.directory} ({left})."
        )

    def eval_due(step: int) -> bool:
        """Whether train_and_eval evaluates after ``step`` (the last, or per eval.period)."""
        if config.eval.mode != "train_and_eval" or step <= 0:
            return False
        period = config.eval.period
        return step >= total_steps or (
            step % spe == 0 and period > 0 and (step // spe) % period == 0
        )

    def run_eval(step: int) -> dict:
        nonlocal evaluating
        evaluating = step
        out = eval_lib.evaluate(
            config,
            workdir,
            model,
            state.variables,
            dataset,
            checkpoint_id=f"step{step}",
            writer=writer,
            step=step,
        )
        evaluating = None
        return out

    def eval_results_file(step: int) -> str:
        from seqnet_jax.evaluation.evaluator import RESULTS_FILE

        return os.path.join(workdir, "eval", f"step{step}", RESULTS_FILE)

    def resume_point() -> str:
        latest = ckpt.latest_step()
        return "the start (no checkpoint)" if latest is None else f"step {latest}"

    def stop_save(why: str) -> None:
        """After an interrupt or a crash: a checkpoint of the last completed step, if it can."""
        if evaluating is not None:
            logging.warning(
                "%s during the evaluation of step %d: its checkpoint is saved, the evaluation "
                "is not; rerun the same command to run it",
                why,
                evaluating,
            )
            return
        if ckpt.latest_step() == step or step == 0:
            logging.warning(
                "%s after step %d: %s; rerun the same command to resume",
                why,
                step,
                "nothing was trained yet" if step == 0 else "its checkpoint is saved",
            )
            return
        if any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state)):
            logging.error(
                "%s while step %d was being trained: its input state is gone (donated), so no "
                "checkpoint can be saved; a rerun resumes from %s",
                why,
                step + 1,
                resume_point(),
            )
            return
        logging.warning("%s: saving a checkpoint of step %d, the last completed step", why, step)
        try:
            save(step)
        except Exception as e:  # noqa: BLE001 - the original error is re-raised
            logging.error(
                "could not save a checkpoint of step %d (%s: %s); a rerun resumes from %s",
                step,
                type(e).__name__,
                e,
                resume_point(),
            )
            return
        logging.warning("saved step %d: rerun the same command to resume from it", step)

    step = int(state.step)
    bar = progress_lib.progress(
        desc="train", total=total_steps, initial=step, unit="step", log_lines=False
    )  # in logs its rate and ETA are the metric line's
    window = MetricWindow()
    in_step = DeferInterrupt(single, "the current step")
    in_save = DeferInterrupt(single, "the checkpoint being saved")
    try:
        if eval_due(step) and not os.path.exists(eval_results_file(step)):
            # e.g. interrupted or killed during this evaluation
            logging.warning("step %d has no evaluation results yet: evaluating it now", step)
            results = run_eval(step)
        if step >= total_steps:
            where = (
                f"; results in {os.path.dirname(eval_results_file(step))}"
                if os.path.exists(eval_results_file(step))
                else ""
            )
            logging.warning(
                "the run is already complete: step %d of %d (checkpoint %s)%s. Raise "
                "solver.max_steps / solver.max_epochs to train further, or use "
                "--config.eval.mode=eval to evaluate again",
                step,
                total_steps,
                ckpt.step_directory(step),
                where,
            )
        while step < total_steps:
            epoch = loader.epoch
            for batch in loader:
                batch_done = loader.state_dict()  # where a resume after this batch starts
                check_pids(batch, num_pids, "in a training batch")
                with in_step:  # a Ctrl-C now stops after the step (its input state is donated)
                    new_state, metrics = trainer.iteration(state, batch)
                    check_finite(metrics, step + 1, kept_checkpoint)
                    state, step, done_loader = new_state, step + 1, batch_done
                bar.update(1)
                window.add(metrics)
                stopping = in_step.pending  # log what the window holds before stopping
                if step % config.log_every == 0 or step == total_steps or stopping:
                    rate = progress_lib.rate(bar)  # steps/s since the start of this run
                    eta = (total_steps - step) / rate if rate > 0 else math.inf
                    logs = window.pop()  # means over the steps since the last line
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)
                    logs["lr"] = float(schedule(step - 1))
                    logs["images_per_s"] = rate * d.batch_size
                    logs["compilations"] = trainer.num_compilations()
                    writer.scalars(step, logs)
                    logging.info(
                        "epoch %d step %d/%d loss %.4f (%s) lr %.2e %.2f img/s eta %s "
                        "compilations %d",
                        epoch,
                        step,
                        total_steps,
                        logs["loss"],
                        " ".join(f"{k[5:]} {logs[k]:.3f}" for k in LOSS_NAMES),
                        logs["lr"],
                        logs["images_per_s"],
                        progress_lib.format_seconds(eta),
                        logs["compilations"],
                    )
                if config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0:
                    with in_save:
                        save(step)
                in_step.raise_pending()
                in_save.raise_pending()
                if step >= total_steps:
                    break
            epoch_done = loader.epoch > epoch or step >= total_steps
            if epoch_done:
                with in_save:
                    save(step)
                in_save.raise_pending()
                if eval_due(step):
                    results = run_eval(step)
    except KeyboardInterrupt:
        if not single:  # the processes may stop at different steps: no save
            logging.warning("interrupted at step %d: resume from the last checkpoint", step)
            raise
        stop_save("interrupted (Ctrl-C)")
        raise
    except NonFiniteLossError:
        raise  # nothing of a diverged state is saved; the message names the kept checkpoint
    except Exception as e:
        if single:  # several processes: the others may be gone (a save waits for all)
            stop_save(f"stopped by {type(e).__name__}")
        raise
    finally:
        bar.close()
        trainer.host.close()
        writer.close()
        ckpt.close()
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "timings.json"), "w") as f:
                json.dump({k: float(np.median(v)) for k, v in trainer.timings.items()}, f, indent=2)
    return results
