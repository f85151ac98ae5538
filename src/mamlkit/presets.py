"""Named experiment configurations: ``mamlkit train <preset>`` reproduces a row of the paper."""

from dataclasses import dataclass
from types import ModuleType

from mamlkit.errors import MamlkitError
from dataclasses import replace

from mamlkit.experiments import fewshot, sinusoid


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
for _name, (_config, _summary) in _FEWSHOT.items():
    PRESETS[_name] = Preset(fewshot, _config, _summary)
    if not _name.endswith("-mlp"):
        PRESETS[f"{_name}-fo"] = Preset(fewshot, replace(_config, first_order=True), f"{_summary}; first-order")


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise MamlkitError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)} (see `mamlkit presets`)")
    return PRESETS[name]
