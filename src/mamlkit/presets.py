"""Named experiment configurations: ``mamlkit train <preset>`` reproduces a row of the paper."""

from dataclasses import dataclass
from types import ModuleType

from mamlkit.errors import MamlkitError
from dataclasses import replace

from mamlkit.experiments import fewshot, own_tasks, rl, sinusoid


@dataclass(frozen=True)
class Preset:
    experiment: ModuleType  # has train(config, run_dir, resume) and evaluate(config, run_dir)
    config: object
    summary: str


PRESETS: dict[str, Preset] = {
    "sinusoid": Preset(sinusoid, sinusoid.SinusoidConfig(),
                       "sinusoid regression, paper §5.1: MLP 1-40-40-1, α=0.01, K=10, 25 tasks, 70k iterations"),
    "sinusoid-fo": Preset(sinusoid, sinusoid.SinusoidConfig(first_order=True),
                          "sinusoid regression with first-order MAML"),
}

# Your own task family (docs/own-data.md): MAML beside a pretrained baseline, as the sinusoid experiment.
PRESETS["table"] = Preset(own_tasks, own_tasks.TasksConfig(),
                          "your table of many small tasks (--data FILE.csv|parquet --task-column C --target-column Y)"
                          ": MLP 40-40, K=10, α=0.01, regression or --problem classification")
PRESETS["tasks"] = Preset(own_tasks, own_tasks.TasksConfig(),
                          "your own task sampler (--tasks package.module:function, docs/own-data.md): MLP 40-40, α=0.01")

_OMNIGLOT = fewshot.FewShotConfig()
_MINIIMAGENET = fewshot.FewShotConfig(dataset="miniimagenet", data="data/miniimagenet", inner_lr=0.01,
                                      inner_steps=5, eval_inner_steps=10, queries=15, clip_value=10.0,
                                      threads=2)
# Table 1 of the paper and appendix A.1: (config, description).
_FEWSHOT = {
    "omniglot-5w1s": (_OMNIGLOT, "Omniglot 5-way 1-shot, conv, α=0.4, 1→3 steps, 32 tasks (paper 98.7%)"),
    "omniglot-5w5s": (replace(_OMNIGLOT, shots=5, queries=5), "Omniglot 5-way 5-shot (paper 99.9%)"),
    "omniglot-20w1s": (replace(_OMNIGLOT, ways=20, inner_lr=0.1, inner_steps=5, eval_inner_steps=5, meta_batch=16),
                       "Omniglot 20-way 1-shot, α=0.1, 5→5 steps, 16 tasks (paper 95.8%)"),
    "omniglot-20w5s": (replace(_OMNIGLOT, ways=20, shots=5, queries=5, inner_lr=0.1, inner_steps=5,
                               eval_inner_steps=5, meta_batch=16), "Omniglot 20-way 5-shot (paper 98.9%)"),
    "omniglot-5w1s-mlp": (replace(_OMNIGLOT, model="mlp"), "Omniglot 5-way 1-shot, no-conv MLP (paper 89.7%)"),
    "omniglot-5w5s-mlp": (replace(_OMNIGLOT, model="mlp", shots=5, queries=5),
                          "Omniglot 5-way 5-shot, no-conv MLP (paper 97.5%)"),
    "miniimagenet-5w1s": (replace(_MINIIMAGENET, meta_batch=4),
                          "MiniImagenet 5-way 1-shot, α=0.01, 5→10 steps, 4 tasks (paper 48.70%)"),
    "miniimagenet-5w5s": (replace(_MINIIMAGENET, shots=5, meta_batch=2),
                          "MiniImagenet 5-way 5-shot, 2 tasks (paper 63.11%)"),
}
# Your own images (docs/own-data.md): the Omniglot protocol on any DIR/<class>/*.png tree.
_IMAGES = replace(_OMNIGLOT, dataset="images", data="data/images")
_FEWSHOT.update({
    "images": (_IMAGES, "your image folder (--data DIR, DIR/<class>/*.png): 5-way 1-shot, Omniglot's conv and α"),
    "images-5w5s": (replace(_IMAGES, shots=5, queries=5), "your image folder, 5-way 5-shot"),
    "images-20w1s": (replace(_FEWSHOT["omniglot-20w1s"][0], dataset="images", data="data/images"),
                     "your image folder, 20-way 1-shot, α=0.1, 5→5 steps, 16 tasks"),
    "images-20w5s": (replace(_FEWSHOT["omniglot-20w5s"][0], dataset="images", data="data/images"),
                     "your image folder, 20-way 5-shot"),
})
for _name, (_config, _summary) in _FEWSHOT.items():
    PRESETS[_name] = Preset(fewshot, _config, _summary)
    if not _name.endswith("-mlp"):
        PRESETS[f"{_name}-fo"] = Preset(fewshot, replace(_config, first_order=True), f"{_summary}; first-order")


# §5.3 and appendix A.2: (config, description); "-small" variants fit a 2-core CPU.
_RL = {
    "2dnav": (rl.RLConfig(), "2D navigation: 20 tasks × 20 trajectories × 100 steps, α=0.1, TRPO KL 0.01 "
                             "(paper MAML −40.4, −11.7, −3.3 after 0..2 steps)"),
    "2dnav-30min": (rl.RLConfig(time_limit=30.0),
                    "2D navigation at the paper's scale, stopped (resumably) after 30 minutes of training"),
    "cheetah-vel": (rl.RLConfig(env="cheetah-vel", meta_batch=40, horizon=200),
                    "half-cheetah goal velocity U[0, 2]: 40 tasks × 20 trajectories × 200 steps"),
    "cheetah-dir": (rl.RLConfig(env="cheetah-dir", meta_batch=40, horizon=200),
                    "half-cheetah forward/backward: 40 tasks × 20 trajectories × 200 steps (paper −50.7 → 293.2)"),
    "ant-vel": (rl.RLConfig(env="ant-vel", meta_batch=40, horizon=200),
                "ant goal velocity U[0, 3]: 40 tasks × 20 trajectories × 200 steps"),
    "ant-dir": (rl.RLConfig(env="ant-dir", meta_batch=40, horizon=200),
                "ant forward/backward: 40 tasks × 20 trajectories × 200 steps"),
}
for _name, (_config, _summary) in list(_RL.items()):
    PRESETS[_name] = Preset(rl, _config, _summary)
    if _name != "2dnav-30min":
        PRESETS[f"{_name}-fo"] = Preset(rl, replace(_config, first_order=True), f"{_summary}; first-order")
    if _name not in ("2dnav", "2dnav-30min"):
        PRESETS[f"{_name}-small"] = Preset(
            rl, replace(_config, meta_batch=10, iterations=1000, eval_tasks=20, time_limit=55.0,
                        validation_tasks=10, validate_every=25),
            f"{_summary.split(':')[0]} at a CPU scale: 10 tasks × 20 trajectories, 55 min of training")


# Meta-World (docs/rl.md): Meta-World's own train/test split, 500-step episodes, 20 tasks × 10
# trajectories as in garage's MAML-TRPO, the paper's α = 0.1 on normalised advantages; success rate
# beside the return. "-small": 10 tasks × 10 trajectories × 150 steps (a shortened horizon), 55 min.
_METAWORLD = {
    "ml1-reach": (rl.RLConfig(env="ml1", metaworld_task="reach-v3"), "Meta-World ML1 reach: 50 train / 50 held-out goals"),
    "ml1-push": (rl.RLConfig(env="ml1", metaworld_task="push-v3"), "Meta-World ML1 push: 50 train / 50 held-out goals"),
    "ml1-pick-place": (rl.RLConfig(env="ml1", metaworld_task="pick-place-v3"),
                       "Meta-World ML1 pick-place: 50 train / 50 held-out goals"),
    "ml10": (rl.RLConfig(env="ml10"), "Meta-World ML10: 10 training task families, 5 held-out "
                                      "(MAML-TRPO ~21% train / 13% held-out success, arXiv:2511.12383)"),
}
for _name, (_config, _summary) in _METAWORLD.items():
    _config = replace(_config, meta_batch=20, trajectories=10, horizon=500, validation_tasks=10, validate_every=25)
    PRESETS[_name] = Preset(rl, _config, f"{_summary}; 20 tasks × 10 trajectories × 500 steps")
    _minutes = 115 if _name == "ml10" else 55  # the budgets: ML1 within an hour, ML10 two hours
    PRESETS[f"{_name}-small"] = Preset(
        rl, replace(_config, meta_batch=10, horizon=150, iterations=2000, eval_tasks=20, time_limit=float(_minutes)),
        f"{_summary.split(':')[0]} at a CPU scale: 10 tasks × 10 trajectories × 150 steps (horizon "
        f"shortened from 500), {_minutes} min of training")


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise MamlkitError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)} (see `mamlkit presets`)")
    return PRESETS[name]
