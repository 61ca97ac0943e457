"""torch.hub entry points: one per registered model name.

    model = torch.hub.load("path/to/resnetlab", "resnet56", source="local")
    model = torch.hub.load("path/to/resnetlab", "resnet18", source="local", num_classes=10)
    model = torch.hub.load("path/to/resnetlab", "resnet56", source="local", weights="runs/c10/best.pt")

    model = torch.hub.load("path/to/resnetlab", "resnet20", source="local", pretrained=True)

Keyword arguments are those of ``resnetlab.create_model`` (``num_classes``, ``in_chans``,
``zero_init_residual``, ...). ``pretrained=True`` loads the weights that ship inside the
package (``resnetlab.list_pretrained()``; any other name is a one-line error listing them);
``weights=`` (or ``pretrained=``) may name a local file instead: a resnetlab checkpoint or
safetensors, or torchvision/timm weights.
When ``num_classes`` is given and differs from the file's, the classifier is replaced.
"""

from resnetlab.errors import UserError as _UserError
from resnetlab.models import MODELS as _MODELS
from resnetlab.models import create_model as _create_model

dependencies = ["torch"]


def _build(name, pretrained=False, weights=None, progress=True, **kwargs):
    """Create ``name`` and optionally load local weights; ``progress`` is accepted for torchvision parity."""
    del progress  # nothing is downloaded
    if isinstance(pretrained, str) and weights is None:
        weights, pretrained = pretrained, False
    if weights is not None and not isinstance(weights, str):
        raise _UserError(f"weights= takes a path to local weights, got {type(weights).__name__}")
    if pretrained is True:
        return _create_model(name, pretrained=True, **kwargs)
    model = _create_model(name, **kwargs)
    if weights is not None:
        from resnetlab.weights import load_pretrained

        load_pretrained(model, weights, replace_classifier="num_classes" in kwargs)
    return model


def _entry(name):
    def entry(pretrained=False, weights=None, progress=True, **kwargs):
        return _build(name, pretrained, weights, progress, **kwargs)

    definition = _MODELS[name]
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"{name}: {definition.family} family, {definition.block} units {list(definition.layers)}.\n\n"
        "Args: pretrained (the shipped weights), weights (optional path to local weights), "
        "**kwargs for resnetlab.create_model."
    )
    return entry


for _name in _MODELS:
    globals()[_name] = _entry(_name)
