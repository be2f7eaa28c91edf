"""Feature visualization by activation maximisation, split as lucent is: parametrisation
(:mod:`.param`), transforms (:mod:`.transforms`), objectives (:mod:`.objectives`) and the
optimisation loop (:mod:`.optimize`)."""

from fvds.builder.render.optimize import (
    JobResult,
    activation_of,
    derive_seed,
    numerics,
    prepare_model,
    render_units,
    resolve_device,
    truncated,
)

__all__ = ["JobResult", "activation_of", "derive_seed", "numerics", "prepare_model",
           "render_units", "resolve_device", "truncated"]
