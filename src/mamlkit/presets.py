"""Named experiment configurations: ``mamlkit train <preset>`` reproduces a row of the paper."""

from dataclasses import dataclass
from types import ModuleType

from mamlkit.errors import MamlkitError
from mamlkit.experiments import sinusoid


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


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise MamlkitError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)} (see `mamlkit presets`)")
    return PRESETS[name]
