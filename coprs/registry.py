"""Every registry of coprs, in one place.

Two kinds of registry live here (see docs/architecture.md):

* the component kinds a reasoning segmentor is assembled from are **root registries in scope
  ``coprs``**; they are built only inside the segmentor and the training loops:
  ``POLICIES``, ``VISION_BACKBONES``, ``PRIORS``, ``DECODERS``, ``REWARDS``, ``ROLLOUT_ENGINES``;
* everything the mmengine ``Runner`` builds is a **child of mmengine's root registry**, exactly as
  mmsegmentation does, so that ``default_scope = 'coprs'`` in a config makes the Runner find our
  classes: ``MODELS``, ``DATASETS``, ``TRANSFORMS``, ``METRICS``, ``LOOPS``, ``HOOKS`` and the
  optimiser/scheduler/visualiser kinds.

``locations`` lists the modules that fill each registry, imported lazily on first lookup, so
``import coprs`` stays cheap.
"""

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import Registry as _MMRegistry

__all__ = [
    "POLICIES", "VISION_BACKBONES", "PRIORS", "DECODERS", "REWARDS", "ROLLOUT_ENGINES",
    "MODELS", "DATASETS", "DATA_SAMPLERS", "FUNCTIONS", "TRANSFORMS", "METRICS", "EVALUATOR", "LOOPS", "HOOKS",
    "LOG_PROCESSORS", "MODEL_WRAPPERS", "OPTIMIZERS", "OPTIM_WRAPPERS",
    "OPTIM_WRAPPER_CONSTRUCTORS", "PARAM_SCHEDULERS", "STRATEGIES", "VISBACKENDS", "VISUALIZERS",
    "COMPONENT_REGISTRIES", "ALL_REGISTRIES",
]


class Registry(_MMRegistry):
    """mmengine ``Registry`` that loads plugins before the first lookup and whose unknown-``type``
    error lists what *is* registered.

    mmengine's own message names the registry but not the alternatives; a user who misspelled
    ``HeatmapPrior`` should see the list without opening the source. Plugins (entry-point group
    ``coprs``, see :mod:`coprs.plugins`) are loaded once, by the first ``get`` of any registry.
    """

    def get(self, key):
        from .plugins import load_plugins  # here: coprs.plugins imports this module

        load_plugins()
        return super().get(key)

    def build(self, cfg, *args, **kwargs):
        obj_type = cfg.get("type") if isinstance(cfg, dict) else None
        if isinstance(obj_type, str) and self.get(obj_type) is None:
            from .plugins import not_loaded

            self.import_from_location()
            names = sorted(self.module_dict)
            idle = "; ".join(not_loaded())  # 'DIST VERSION is installed but not loaded: why'
            raise KeyError(
                f"'{obj_type}' is not registered in the '{self.scope}::{self.name}' registry. "
                f"Registered names: {', '.join(names) if names else '(none)'}. Check `type` in "
                "your config, or install the plugin that provides it (`coprs list` shows all)."
                + (f" {idle}." if idle else "")
            )
        return super().build(cfg, *args, **kwargs)

    def registered_names(self) -> list[str]:
        """Names registered here (after importing ``locations`` and loading plugins), sorted."""
        from .plugins import load_plugins

        load_plugins()
        self.import_from_location()
        return sorted(self.module_dict)


# --- component kinds (root registries, scope 'coprs') -------------------------------------------
# multimodal LLMs that write the response and expose hidden states / token log-probs
POLICIES = Registry("policy", scope="coprs", locations=["coprs.policies"])
# frozen image encoders that give the keys K (B x C x h x w)
VISION_BACKBONES = Registry("vision_backbone", scope="coprs", locations=["coprs.backbones"])
# prior interfaces: policy output -> what the decoder consumes (heatmap, latent token, coordinates)
PRIORS = Registry("prior", scope="coprs", locations=["coprs.priors"])
# decoders: image keys + prior -> mask logits
DECODERS = Registry("decoder", scope="coprs", locations=["coprs.decoders"])
# rollout scorers used by GRPO
REWARDS = Registry("reward", scope="coprs", locations=["coprs.rewards"])
# engines that sample G responses per prompt
ROLLOUT_ENGINES = Registry("rollout_engine", scope="coprs", locations=["coprs.rollout"])
# judges of a chain of thought's consistency (paper Sec. 4.3; tools/analysis/cot_consistency.py)
COT_JUDGES = Registry("cot_judge", scope="coprs", locations=["coprs.evaluation"])

# --- kinds the mmengine Runner builds (children of mmengine's roots) ----------------------------
# segmentors, losses, data preprocessors
MODELS = Registry("model", parent=MMENGINE_MODELS, locations=["coprs.models", "coprs.losses"])
# datasets
DATASETS = Registry("dataset", parent=MMENGINE_DATASETS, locations=["coprs.datasets"])
# samplers
DATA_SAMPLERS = Registry("data sampler", parent=MMENGINE_DATA_SAMPLERS, locations=["coprs.datasets"])
# functions built from config (collate functions)
FUNCTIONS = Registry("function", parent=MMENGINE_FUNCTIONS, locations=["coprs.datasets"])
# data transforms
TRANSFORMS = Registry("transform", parent=MMENGINE_TRANSFORMS, locations=["coprs.datasets"])
# metrics
METRICS = Registry("metric", parent=MMENGINE_METRICS, locations=["coprs.evaluation"])
# evaluators
EVALUATOR = Registry("evaluator", parent=MMENGINE_EVALUATOR, locations=["coprs.evaluation"])
# training / validation / test loops
LOOPS = Registry("loop", parent=MMENGINE_LOOPS, locations=["coprs.engine"])
# hooks
HOOKS = Registry("hook", parent=MMENGINE_HOOKS, locations=["coprs.engine"])
# log processors
LOG_PROCESSORS = Registry("log processor", parent=MMENGINE_LOG_PROCESSORS, locations=["coprs.engine"])
# model wrappers (DDP / FSDP variants)
MODEL_WRAPPERS = Registry("model_wrapper", parent=MMENGINE_MODEL_WRAPPERS, locations=["coprs.engine"])
# FlexibleRunner strategies (FSDP)
STRATEGIES = Registry("strategy", parent=MMENGINE_STRATEGIES, locations=["coprs.engine"])
# optimisers
OPTIMIZERS = Registry("optimizer", parent=MMENGINE_OPTIMIZERS, locations=["coprs.engine"])
# optimiser wrappers
OPTIM_WRAPPERS = Registry("optim_wrapper", parent=MMENGINE_OPTIM_WRAPPERS, locations=["coprs.engine"])
# optimiser wrapper constructors (parameter groups with lr multipliers)
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    "optimizer wrapper constructor",
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    locations=["coprs.engine"],
)
# learning-rate / loss-weight schedulers
PARAM_SCHEDULERS = Registry("parameter scheduler", parent=MMENGINE_PARAM_SCHEDULERS, locations=["coprs.engine"])
# visualisation backends
VISBACKENDS = Registry("vis_backend", parent=MMENGINE_VISBACKENDS, locations=["coprs.visualization"])
# visualisers
VISUALIZERS = Registry("visualizer", parent=MMENGINE_VISUALIZERS, locations=["coprs.visualization"])

#: the component kinds, by the name ``coprs list`` and plugins use for them
COMPONENT_REGISTRIES = {
    "policies": POLICIES,
    "vision_backbones": VISION_BACKBONES,
    "priors": PRIORS,
    "decoders": DECODERS,
    "rewards": REWARDS,
    "rollout_engines": ROLLOUT_ENGINES,
    "cot_judges": COT_JUDGES,
}

#: every registry of coprs, by name
ALL_REGISTRIES = {
    **COMPONENT_REGISTRIES,
    "models": MODELS,
    "datasets": DATASETS,
    "data_samplers": DATA_SAMPLERS,
    "functions": FUNCTIONS,
    "transforms": TRANSFORMS,
    "metrics": METRICS,
    "evaluator": EVALUATOR,
    "loops": LOOPS,
    "hooks": HOOKS,
    "log_processors": LOG_PROCESSORS,
    "model_wrappers": MODEL_WRAPPERS,
    "optimizers": OPTIMIZERS,
    "optim_wrappers": OPTIM_WRAPPERS,
    "optim_wrapper_constructors": OPTIM_WRAPPER_CONSTRUCTORS,
    "param_schedulers": PARAM_SCHEDULERS,
    "strategies": STRATEGIES,
    "vis_backends": VISBACKENDS,
    "visualizers": VISUALIZERS,
}
