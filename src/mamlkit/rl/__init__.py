"""MAML for reinforcement learning (paper §5.3): task environments, a Gaussian MLP policy, a batched
sampler, the REINFORCE inner step and the TRPO outer step through it."""
