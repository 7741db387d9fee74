"""A small CNN as somebody else's code defines it: lipbench evaluates it from this constructor and a
safetensors state dict, with a strict Lipschitz bound computed from the traced graph.

    pip install -e examples/lipbench_example_architecture
    python -c "import torch, safetensors.torch as st; from lipbench_example_architecture.model import small_cnn; \
        st.save_file(small_cnn((1, 8, 8), 10).state_dict(), 'mine.safetensors')"   # your trained weights instead
    lipbench evaluate --dataset digits --architecture example_small_cnn --weights mine.safetensors --card mine.card.yaml

Every operator must have a strict Lipschitz rule in lipbench's graph bound (convolutions, linear layers,
ReLU / GroupSort / sort, pooling, ...); anything else is refused with the node named.
"""

from __future__ import annotations

from torch import nn

from lipbench.evaluate.plugins import register_architecture


@register_architecture("example_small_cnn")
def small_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """conv 3x3 (16) -> ReLU -> average pool 2 -> dense 64 -> ReLU -> dense ``num_classes``."""
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * (height // 2) * (width // 2), 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )
