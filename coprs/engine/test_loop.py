"""Evaluation over every split a config names, at test time and during training (LOOPS registry)."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

from mmengine.dist import is_main_process
from mmengine.model import is_model_wrapper
from mmengine.runner import BaseLoop
from tqdm import tqdm

from ..registry import LOOPS
from ..utils import fork_rng
from .fsdp import full_params

__all__ = ["ReasonSegTestLoop", "ReasonSegValLoop", "REASONING_MODES", "GIVEN",
           "check_generation_engine", "flat_metrics", "drop_validation", "load_given_responses"]

#: what the policy reasons with at test time ('all' on the command line)
REASONING_MODES = ("generated", "gold", "empty")
#: the mode that teacher-forces responses read from a file (``responses``)
GIVEN = "given"


def _check_reasoning(reasoning: str) -> None:
    if reasoning not in (*REASONING_MODES, GIVEN):
        raise ValueError(f"reasoning={reasoning!r}; choose one of {(*REASONING_MODES, GIVEN)}")


def load_given_responses(path: str | Path) -> dict[str | None, dict[str, str]]:
    """Responses to teacher-force, keyed by results folder (``<dataset>_<split>``) and sample.

    ``path`` is a JSON-lines file whose lines carry ``sample_id`` and ``response`` (other keys
    are ignored, so a ``per_sample.jsonl`` of ``coprs test`` qualifies), used for every split
    (key None); or a folder of such files as ``coprs test`` writes them
    (``per_sample_<mode>/<dataset>_<split>/per_sample.jsonl``), each for its own split. A line
    without the two keys is a ValueError naming the file and line."""
    import json

    from ..evaluation.functional import require_per_sample

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"responses file or folder '{path}' does not exist")
    files = {None: path} if path.is_file() else require_per_sample(path)
    table: dict[str | None, dict[str, str]] = {}
    for key, file in files.items():
        responses = table.setdefault(key, {})
        for n, line in enumerate(Path(file).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                sid, response = str(record["sample_id"]), record["response"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{file}:{n}: expected a JSON object with 'sample_id' and "
                                 "'response'") from None
            if not isinstance(response, str):
                raise ValueError(f"{file}:{n}: 'response' must be a string")
            responses[sid] = response
    return table


#: generation-engine settings of memory and throughput, not of what is generated: left out of
#: a split's fingerprint, so that a run resumed with more GPU memory (after running out) goes on
_ENGINE_RUNTIME_KEYS = ("gpu_memory_utilization", "sleep_level", "max_num_seqs",
                        "max_num_batched_tokens", "enable_chunked_prefill")


#: dataset config keys that change which samples a split has (or how they are kept in memory),
#: not any sample: left out of the fingerprint (by dataset type; others: ``indices`` only)
_SAME_SAMPLES_KEYS = {"ShapesReasonDataset": ("indices", "num_samples", "cache_samples")}


def _annotation_files(dataset) -> list[str]:
    """The annotation files of a dataset and of the datasets it wraps (``ConcatDataset``'s
    ``datasets``, ``RepeatDataset``'s ``dataset``)."""
    files = list(getattr(dataset, "annotation_files", None)
                 or [getattr(dataset, "ann_file", None)])
    for inner in [*(getattr(dataset, "datasets", None) or []), getattr(dataset, "dataset", None)]:
        if inner is not None:
            files += _annotation_files(inner)
    return [f for f in files if f and os.path.isfile(f)]


def _annotation_stamps(dataset) -> dict[str, dict]:
    """``{file name: file_stamp}`` of :func:`_annotation_files` (``name#2`` for a second file of
    the same name, e.g. two parts' ``val.jsonl``)."""
    from ..evaluation.progress import file_stamp

    stamps: dict[str, dict] = {}
    for path in _annotation_files(dataset):
        key, n = os.path.basename(path), 1
        while key in stamps:
            n += 1
            key = f"{os.path.basename(path)}#{n}"
        stamps[key] = file_stamp(path)
    return stamps


def _responses_stamp(path) -> dict | None:
    """The ``--responses`` file's stamp; for a folder, those of the per-sample files
    :func:`load_given_responses` reads (not the folder's progress files or ``run.json``)."""
    from ..evaluation.functional import require_per_sample
    from ..evaluation.progress import file_stamp

    if path is None or not Path(path).is_dir():
        return file_stamp(path)
    return {"files": {key: file_stamp(file)
                      for key, file in sorted(require_per_sample(path).items())}}


def _check_unique_ids(dataset, split: str) -> None:
    """Records are matched to samples by ``sample_id``: a split whose samples share one cannot be
    resumed (one sample would take another's record)."""
    from collections import Counter

    from ..utils import first_few

    counts = Counter(str(dataset.get_data_info(i).get("sample_id")) for i in range(len(dataset)))
    shared = [k for k, n in counts.items() if n > 1]
    if shared:
        raise ValueError(
            f"--resume: {len(shared)} sample_id(s) of {split} belong to several samples each "
            f"({first_few(shared, 3)}); a resumed evaluation matches records to samples by "
            "sample_id, so it cannot continue this split. Evaluate it without --resume, or give "
            "each sample its own id (a JSON-lines dataset takes it from each line's \"id\")")


def _check_one_gpu(tensor_parallel_size) -> None:
    if isinstance(tensor_parallel_size, int) and tensor_parallel_size > 1:
        # the ranks of a tensor-parallel group must generate together, and an evaluation rank
        # skips the batches it has nothing to predict in (unreadable, resumed)
        raise ValueError(
            f"test_cfg.generation_engine.tensor_parallel_size={tensor_parallel_size}: "
            "evaluation generates with one GPU per process; use 1 (a 7B policy fits one GPU) "
            "and more processes")


def check_generation_engine(cfg: dict | None) -> None:
    """Refuse, from the config alone (before a model is built or a mode evaluated), a
    generation engine that would split the policy over several GPUs."""
    if cfg is not None:
        _check_one_gpu(cfg.get("tensor_parallel_size"))
        _check_one_gpu((cfg.get("llm_kwargs") or {}).get("tensor_parallel_size"))


def _sum_over_ranks(count: int) -> int:
    """``count`` summed over the ranks of a distributed run (itself otherwise): each rank sees
    its shard of a split."""
    import torch
    from mmengine.dist import all_reduce

    total = torch.tensor(count, dtype=torch.long)
    all_reduce(total, op="sum")
    return int(total)


@LOOPS.register_module()
class ReasonSegTestLoop(BaseLoop):
    """Evaluate each dataset in ``datasets`` with a copy of the test dataloader and evaluator.

    Args:
        runner: the mmengine Runner.
        dataloader: the ``test_dataloader`` config; its ``dataset`` is replaced per split.
        evaluator: the ``test_evaluator`` config (a :class:`ReasonSegMetric`), copied per split
            with ``dataset_name``, ``split`` and ``out_dir`` filled in.
        datasets: dataset configs, one per evaluated split.
        reasoning: 'generated' (greedy, the default), 'gold' (teacher-force the dataset's gold
            response, ``gold_key``; tests the heatmap/decoder path alone), 'empty' (every
            instruction replaced by an empty string; tests that language steers the mask) or
            'given' (teacher-force the responses of the file or folder ``responses``, e.g.
            another model's reasoning or edited reasoning, on any dataset; a sample the file
            has no response for is reported and skipped).
        gold_key: data_sample key holding the gold response (synthetic world only).
        responses: for 'given': see :func:`load_given_responses`.
        out_dir: per-sample results folder (``<out_dir>/<dataset>_<split>/per_sample.jsonl``).
        show_dir: if set, a panel PNG per sample under ``<show_dir>/<dataset>_<split>/``.
        max_new_tokens: response budget (the policy's default when None).
        resume: continue an interrupted evaluation: with ``out_dir``, the records each split
            wrote as it went (``progress/``, :mod:`coprs.evaluation.progress`) are kept and
            only the samples without one are predicted; the earlier run must have had the
            same fingerprint (checkpoint, mode, budget, model/dataset/metric configs), or it is
            an error naming what changed. False: every split starts from nothing.
        checkpoint: the checkpoint evaluated (a file or an export folder), for the fingerprint.
        generation_engine: a ``ROLLOUT_ENGINES`` config that writes the responses of the
            'generated' and 'empty' modes, greedily, instead of the policy's transformers
            ``generate``: ``dict(type='VLLMRolloutEngine', weights_fixed=True,
            sleep_level=None)`` for vLLM on a GPU (``coprs test --vllm``). None: the policy's.
    """

    #: where the datasets are configured (for errors naming one)
    _cfg_key = "test_cfg.datasets"
    #: ``{"test_cfg.datasets.<i>": why}`` for the datasets of the last run that could not be built
    failed_datasets: dict[str, str] = {}
    #: whether splits write their records as they go, so that ``resume`` can continue them
    _keeps_progress = True

    def __init__(self, runner, dataloader: dict, evaluator: dict, datasets: list[dict],
                 reasoning: str = "generated", gold_key: str = "response_coprs",
                 out_dir: str | None = None, show_dir: str | None = None,
                 max_new_tokens: int | None = None, responses: str | None = None,
                 resume: bool = False, checkpoint: str | None = None,
                 generation_engine: dict | None = None) -> None:
        self._runner = runner
        _check_reasoning(reasoning)
        if not datasets:
            raise ValueError("test_cfg.datasets is empty: name at least one dataset to evaluate")
        self.dataloader_cfg, self.evaluator_cfg = dataloader, evaluator
        self.datasets = datasets
        self.reasoning, self.gold_key = reasoning, gold_key
        self.out_dir, self.show_dir = out_dir, show_dir
        self.max_new_tokens = max_new_tokens
        self.responses = responses
        self.resume, self.checkpoint = resume, checkpoint
        self.generation_engine = generation_engine
        check_generation_engine(generation_engine)
        self._engine = None  # built from generation_engine when a generated mode starts
        self._done: dict[str, dict] = {}

    def run(self) -> dict:
        """Returns ``{"<dataset>/<split>": metrics}``.

        ``reasoning``, ``out_dir`` and ``show_dir`` may be changed between runs (``coprs test
        --reasoning generated gold empty`` evaluates each mode with one model)."""
        _check_reasoning(self.reasoning)
        self.runner.call_hook("before_test")
        results = self._evaluate()
        # (no after_test_epoch: LoggerHook expects one dataloader and flat scalar metrics)
        self.runner.call_hook("after_test")
        return results

    def _evaluate(self) -> dict:
        model = self.runner.model.module if is_model_wrapper(self.runner.model) else \
            self.runner.model
        model.eval()
        results = {}
        given = None
        if self.reasoning == GIVEN:
            if self.responses is None:
                raise ValueError("reasoning='given' needs responses= (a JSON-lines file or a "
                                 "per-sample folder); coprs test --responses PATH")
            given = load_given_responses(self.responses)
        self.check_resumable()
        if self.reasoning in ("generated", "empty"):  # on every rank at once, before any batch
            self._built_engine(model)
        self.failed_datasets = {}
        for i, ds_cfg in enumerate(self.datasets):
            try:
                loader = self.runner.build_dataloader(dict(copy.deepcopy(self.dataloader_cfg),
                                                           dataset=copy.deepcopy(ds_cfg)))
            except Exception as exc:  # noqa: BLE001 - reported; the splits done are kept
                # a wrong path or format in one dataset must not lose the splits evaluated
                # before it (hours of inference): it is logged, the others are evaluated, and
                # coprs test ends with an error naming it
                key = f"{self._cfg_key}.{i}"
                what = ds_cfg.get("type", "?") if isinstance(ds_cfg, dict) else "?"
                self.failed_datasets[key] = f"{what}: {type(exc).__name__}: {exc}"
                self.runner.logger.error(f"{key} ({what}) could not be built, so it is not "
                                         f"evaluated: {exc}")
                continue
            self.dataloader = loader  # the runner's test/val_dataloader: the split being run
            meta = loader.dataset.metainfo
            name, split = str(meta.get("dataset_name", "dataset")), str(meta.get("split", "test"))
            if f"{name}/{split}" in results:  # its metrics and records would replace the other's
                raise ValueError(
                    f"{self._cfg_key}.{i} is {name}/{split} again (an earlier dataset of "
                    f"{self._cfg_key} is too): give it another split or "
                    "metainfo=dict(dataset_name=...)")
            ev_cfg = copy.deepcopy(self.evaluator_cfg)
            ev_cfg.update(dataset_name=name, split=split, out_dir=self.out_dir)
            evaluator = self.runner.build_evaluator(ev_cfg)
            evaluator.dataset_meta = meta
            table = None
            if given is not None:
                from ..evaluation.functional import results_subdir

                subdir = results_subdir(name, split)
                table = given.get(subdir, given.get(None))
                if table is None:
                    raise ValueError(f"responses '{self.responses}' has no folder {subdir}/ "
                                     f"(it has: {', '.join(k for k in given if k)})")
            progress = self._start_progress(evaluator, ds_cfg, name, split, loader.dataset)
            found = 0
            for batch in tqdm(loader, desc=f"{name}/{split} ({self.reasoning})",
                              disable=not is_main_process()):
                found += self._predict(model, batch, name, split, table)
                before = len(evaluator.metrics[0].results)
                evaluator.process(data_samples=batch["data_samples"], data_batch=batch)
                if progress is not None:  # on disk now: a kill loses at most this batch
                    progress.append(r for r in evaluator.metrics[0].results[before:]
                                    if not r.get("skipped") and r["sample_id"] not in self._done)
            if table is not None and len(loader.dataset) and not _sum_over_ranks(found):
                raise ValueError(f"responses '{self.responses}' has no response for any sample "
                                 f"of {name}/{split}; do its sample_ids come from this split?")
            metrics = results[f"{name}/{split}"] = evaluator.evaluate(len(loader.dataset))
            if progress is not None:
                progress.finish()
            self._done = {}
            # samples the dataset left out while loading its annotations (a missing image, a
            # broken line): counted beside the unreadable ones, so n is never silently short
            dropped = list(getattr(loader.dataset, "skipped", None) or [])
            metrics["n_dropped_at_load"] = len(dropped)
            metrics["dropped_at_load"] = [f"{where}: {why}" for where, why in dropped]
            self.runner.logger.info(f"{name}/{split} ({self.reasoning} reasoning): " + ", ".join(
                f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        return results

    def _fingerprint(self, ds_cfg=None, dataset=None) -> dict:
        """What produced a split's records (:mod:`coprs.evaluation.progress`): the checkpoint
        and annotation files by content, the mode and its options, the model, dataset, metric
        and engine configs. Settings that change no result are left out: the dataset's
        ``indices`` (``--limit`` changes which samples, not how each is scored; so does the
        synthetic world's ``num_samples``, whose sample i is the same at any count), the metric's
        ``out_dir`` and ``collect_device`` (where ranks gather results), the generation
        engine's memory and throughput settings, and the policy's
        ``model_path`` when the checkpoint is an export folder (its files are stamped, so a
        copy on another disk resumes) and the feature cache's ``root``. Of a ``--responses``
        folder, only the per-sample files it gives responses from are stamped."""
        from ..apis.inference import export_dir
        from ..evaluation.progress import file_stamp, plain_config
        from ..utils import source_version

        model = plain_config(self.runner.cfg.get("model"))
        if isinstance(model, dict):
            if export_dir(self.checkpoint) is not None:
                (model.get("policy") or {}).pop("model_path", None)
            # where features are cached changes no feature (their dtype is kept)
            (model.get("feature_cache") or {}).pop("root", None)
        generates = self.reasoning in ("generated", "empty")
        return dict(
            coprs_version=source_version(), checkpoint=file_stamp(self.checkpoint),
            reasoning=self.reasoning, max_new_tokens=self.max_new_tokens,
            gold_key=self.gold_key if self.reasoning == "gold" else None,
            responses=_responses_stamp(self.responses) if self.reasoning == GIVEN else None,
            engine=plain_config(self.generation_engine, drop=_ENGINE_RUNTIME_KEYS)
            if generates else None,
            model=model,
            dataset=plain_config(ds_cfg, drop=_SAME_SAMPLES_KEYS.get(
                (ds_cfg or {}).get("type"), ("indices",))),
            # records scored against an annotation file edited since are not reused: the
            # dataset's annotation files by content (a RefCOCO refs pickle and instances file,
            # a JSON-lines file, those of a ConcatDataset's parts; not the images, nor
            # ReasonSeg's per-image files)
            annotations=_annotation_stamps(dataset) if dataset is not None else None,
            metric=plain_config(self.evaluator_cfg, drop=("out_dir", "collect_device")))

    def check_resumable(self) -> None:
        """With ``resume``, before any split is evaluated or replaced: a split of ``out_dir``
        interrupted by an evaluation with another checkpoint or options is an error (a typo in a
        resume command must not cost the finished splits)."""
        from ..evaluation.progress import check_interrupted

        if self.resume and self._keeps_progress and self.out_dir is not None:
            check_interrupted(self.out_dir, self._fingerprint())

    def _start_progress(self, evaluator, ds_cfg, name: str, split: str, dataset):
        """The split's :class:`~coprs.evaluation.progress.EvalProgress` (None when records are
        not written), after reading what an earlier run scored into ``self._done``."""
        from ..evaluation import ReasonSegMetric
        from ..evaluation.functional import results_subdir
        from ..evaluation.progress import EvalProgress

        self._done = {}
        if (not self._keeps_progress or self.out_dir is None
                or not isinstance(evaluator.metrics[0], ReasonSegMetric)):
            return None
        if self.resume:
            _check_unique_ids(dataset, f"{name}/{split}")
        progress = EvalProgress(Path(self.out_dir) / results_subdir(name, split),
                                self._fingerprint(ds_cfg, dataset), f"{name}/{split}")
        self._done = progress.start(self.resume)
        if self.resume:
            self.runner.logger.info(
                f"{name}/{split} ({self.reasoning}): --resume: "
                + (f"{len(self._done)} records of the earlier run are kept; only samples "
                   "without one are predicted" if self._done
                   else "no earlier records, evaluating it all"))
        return progress

    def _predict(self, model, batch: dict, name: str, split: str,
                 given: dict[str, str] | None = None) -> int:
        """Predict the batch's readable samples into ``sample['pred']`` (a sample an earlier
        run scored keeps its record, ``sample['resumed_record']``); returns how many."""
        samples, images = batch["data_samples"], batch["inputs"]
        resumed = 0
        for s in samples:
            record = self._done.get(str(s.get("sample_id")))
            if record is not None:
                s["resumed_record"], resumed = record, resumed + 1
        if given is not None:  # no response in the file: reported with the unreadable samples
            for s in samples:
                if (not s.get("load_error") and "resumed_record" not in s
                        and str(s.get("sample_id")) not in given):
                    s["load_error"] = f"no response for this sample in '{self.responses}'"
        ok = [i for i, s in enumerate(samples)
              if not s.get("load_error") and "resumed_record" not in s]
        if not ok:
            return resumed
        instructions = ["" if self.reasoning == "empty" else samples[i]["instruction"]
                        for i in ok]
        responses = None
        if self.reasoning == "gold":
            missing = [samples[i].get("sample_id") for i in ok if self.gold_key not in samples[i]]
            if missing:
                raise ValueError(f"reasoning='gold' needs '{self.gold_key}' in every sample; "
                                 f"{name}/{split} has none for {missing[:3]} (only the synthetic "
                                 "world ships gold responses)")
            responses = [samples[i][self.gold_key] for i in ok]
        elif given is not None:
            responses = [given[str(samples[i]["sample_id"])] for i in ok]
        engine = None if responses is not None else self._built_engine(model)
        preds = model.predict_images([images[i] for i in ok], instructions, responses,
                                     max_new_tokens=self.max_new_tokens, engine=engine)
        for i, pred in zip(ok, preds):
            samples[i]["pred"] = pred
            if self.show_dir is not None:
                self._show(images[i], samples[i], instructions[ok.index(i)], name, split)
        return len(ok) + resumed

    def _built_engine(self, model):
        """The greedy generation engine of ``generation_engine`` (built and set up once, at the
        start of the first generated or empty mode), or None for the policy's own
        ``generate``."""
        if self.generation_engine is None:
            return None
        if self._engine is None:
            from ..registry import ROLLOUT_ENGINES

            cfg = dict(copy.deepcopy(dict(self.generation_engine)), greedy=True)
            if self.max_new_tokens is not None:
                cfg["max_new_tokens"] = self.max_new_tokens
            engine = ROLLOUT_ENGINES.build(cfg)
            _check_one_gpu(getattr(engine, "tensor_parallel_size", 1))
            engine.setup(model.policy)
            self._engine = engine
        return self._engine

    def _show(self, image, sample: dict, instruction: str, name: str, split: str) -> None:
        from ..evaluation.functional import results_subdir
        from ..visualization import make_panel

        folder = Path(self.show_dir) / results_subdir(name, split)
        folder.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(sample.get("sample_id", "sample")))
        pred = sample["pred"]
        make_panel(image, instruction, pred.heatmap, pred.mask, pred.response,
                   folder / f"{stem}.png", format_ok=pred.format_ok)


def flat_metrics(results: dict) -> dict[str, float]:
    """``{"shapes/val": {"gIoU": 0.5, "by_type": {…}, …}}`` → ``{"shapes/val/gIoU": 0.5, …}``:
    the scalar metrics of every split, under ``<dataset>/<split>/<metric>``."""
    return {f"{split}/{k}": float(v) for split, metrics in results.items()
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def drop_validation(cfg) -> None:
    """Remove validation during training from an mmengine ``cfg``, in place (timing runs and
    benchmarks, where it would only add time)."""
    for key in ("val_cfg", "val_dataloader", "val_evaluator"):
        cfg.pop(key, None)


@LOOPS.register_module()
class ReasonSegValLoop(ReasonSegTestLoop):
    """Validation during training: :class:`ReasonSegTestLoop`'s evaluation of every dataset in
    ``datasets``, run by the train loop every ``train_cfg.val_interval`` iterations and at its
    end (``val_cfg``, with ``val_dataloader`` and ``val_evaluator`` set like their ``test_``
    counterparts).

    The scalar metrics go to ``after_val_epoch`` as ``<dataset>/<split>/<metric>`` (e.g.
    ``shapes/val/gIoU``), so the logger prints them, the visualizer backends (TensorBoard) plot
    them against the iteration (with ``LoggerHook(log_metric_by_epoch=False)``, as the shipped
    schedules set), and ``default_hooks.checkpoint`` with ``save_best='shapes/val/gIoU',
    rule='greater'`` keeps the best checkpoint. Arguments as :class:`ReasonSegTestLoop`; the
    metric's per-sample records are written only when ``out_dir`` is given. ``vis_samples=N``
    also draws the first N samples of each split (image | heatmap | mask | response) to the
    visualizer at every validation, so the masks can be watched as training goes. The global random
    state is restored after each validation, so a run with validation trains exactly as one
    without; under FSDP the weights are gathered for it.
    """

    _cfg_key = "val_cfg.datasets"
    _keeps_progress = False

    def __init__(self, *args, vis_samples: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(vis_samples, int) or vis_samples < 0:
            raise ValueError(f"val_cfg.vis_samples={vis_samples!r} must be a count >= 0")
        self.vis_samples = vis_samples
        self._shown: dict[str, int] = {}

    def _predict(self, model, batch: dict, name: str, split: str,
                 given: dict[str, str] | None = None) -> int:
        found = super()._predict(model, batch, name, split, given)
        key = f"{name}_{split}"
        for image, sample in zip(batch["inputs"], batch["data_samples"]):
            if self._shown.get(key, 0) >= self.vis_samples or "pred" not in sample:
                continue
            self._shown[key] = self._shown.get(key, 0) + 1
            self._add_panel(image, sample, key)
        return found

    def _add_panel(self, image, sample: dict, key: str) -> None:
        """The sample's panel to every visualizer backend, as ``<dataset>_<split>_<id>`` at this
        iteration (LocalVisBackend: ``vis_data/vis_image/<name>_<iter>.png``; TensorBoard: an
        image summary)."""
        from ..visualization import render_panel

        pred = sample["pred"]
        instruction = "" if self.reasoning == "empty" else sample.get("instruction", "")
        panel = render_panel(image, instruction, pred.heatmap, pred.mask, pred.response,
                             format_ok=pred.format_ok)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(sample.get("sample_id", "sample")))
        self.runner.visualizer.add_image(f"{key}_{stem}", panel, step=self.runner.iter)

    def run(self) -> dict[str, float]:
        _check_reasoning(self.reasoning)
        self._shown = {}
        self.runner.call_hook("before_val")
        self.runner.call_hook("before_val_epoch")
        # loaders draw their base seed from the random state; FSDP-sharded weights are gathered
        # for the evaluation as for GRPO rollouts
        with fork_rng(), full_params(self.runner.model):
            metrics = flat_metrics(self._evaluate())
        self.runner.call_hook("after_val_epoch", metrics=metrics)
        self.runner.call_hook("after_val")
        return metrics
