"""The thin Python API a viewer or product team calls (DESIGN §2 wrapped as calls).

    import engine
    eng = engine.Engine()                      # best device, small 3D U-Net
    s = eng.open(image, spacing=(1.25,) * 3, axis=2)
    s.set_extent(first, last)                  # the object's first/last slice on `axis`
    for z in s.propose(3):                     # cell centres of the extent (Config.proposal)
        s.annotate(z, person_draws(z))
    proxy, conf = s.propagate()                # registration once per case, then propagation
    s.learn(20)                                # or fut = s.learn_async(20)
    for z in s.propose(2):                     # the largest gaps next
        s.annotate(z, person_draws(z))
    s.propagate(); s.learn(20)
    mask = s.result()                          # fused front-end mask, caller's array type
    s.commit()                                 # into the replay buffer; stream counters on

Arrays go in and out as NumPy, PyTorch or CuPy; results come back in the type of the
image given to :meth:`Engine.open` (DLPack, no copy when the device matches).

One module per concern: :mod:`~engine.api.config` (``Config``),
:mod:`~engine.api.engine` (``Engine``: weights, replay, persistence, concurrency),
:mod:`~engine.api.session` (``Session``: one case, orchestration),
:mod:`~engine.api.annotations` (the undo-able drawings), :mod:`~engine.api.fusion`
(the fusion gate), :mod:`~engine.api.arrays` (array interop and boundary checks),
:mod:`~engine.api.timing` (stage timings).
"""

from .config import RUNTIME_FIELDS, Config
from .engine import STATE_VERSION, Engine, LabelledPool
from .fusion import FUSION_WEIGHTS, fit_fusion_weight, fusion_errors
from .session import Session

__all__ = [
    "Config",
    "Engine",
    "Session",
    "LabelledPool",
    "FUSION_WEIGHTS",
    "RUNTIME_FIELDS",
    "STATE_VERSION",
    "fit_fusion_weight",
    "fusion_errors",
]
